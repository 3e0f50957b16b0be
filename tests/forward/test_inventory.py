"""Fleet views read live: after a copy, a delete or a pull (through the proxy or behind its back)
the very next `ollama list` through the proxy is what the nodes hold, byte for byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from aiohttp import web

from sollol_proxy.app import INVENTORY
from sollol_proxy.config import NodeConfig, load_config
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.forward import views
from sollol_proxy.forward.inventory import LiveInventory
from sollol_proxy.server import start_proxy
from sollol_proxy.simulator import SimulatedNode
from tests.conftest import TEST_SETTINGS, ClusterFactory, eventually, free_port

NEVER = 10**9  # no background re-read of /api/tags during the test: only the views read it
MODEL = "llama3.2:latest"


async def body_of(http: aiohttp.ClientSession, method: str, url: str, data: bytes = b"") -> bytes:
    async with http.request(method, url, data=data or None) as response:
        assert response.status == 200, await response.text()
        return await response.read()


async def test_copy_then_list_through_the_proxy(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]), inventory__interval=NEVER)
    node = made.node("a")
    copy = b'{"source":"llama3.2","destination":"mine"}'
    assert await body_of(http, "POST", made.url + "/api/copy", copy) == b""
    # The proxy's fleet-wide answers are the node's own bytes, the copy included.
    for path in ("/api/tags", "/v1/models", "/v1/models/mine:latest"):
        assert await body_of(http, "GET", made.url + path) == await body_of(
            http, "GET", node.url + path
        ), path
    assert b'"mine:latest"' in await body_of(http, "GET", made.url + "/api/tags")


async def test_changes_behind_the_proxys_back_show_at_once(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL]), dict(name="b", models=[]), inventory__interval=NEVER
    )
    a, b = made.node("a"), made.node("b")
    await body_of(http, "POST", a.url + "/api/copy", b'{"source":"llama3.2","destination":"mine"}')
    await body_of(http, "POST", b.url + "/api/pull", b'{"model":"qwen2.5:7b","stream":false}')
    async with http.get(made.url + "/api/tags") as response:
        names = [m["name"] for m in orjson.loads(await response.read())["models"]]
        assert response.headers["X-Sollol-Node"] == "a,b"
        assert response.headers["X-Sollol-Route"] == (
            "fleet view: 2 of 2 reachable nodes answered live"
        )
        assert "X-Sollol-Stale" not in response.headers
    assert sorted(names) == ["llama3.2:latest", "mine:latest", "qwen2.5:7b"]
    # What the view read also updated the routing inventory: the copy routes to a at once.
    assert "mine:latest" in made.fleet.nodes["a"].models
    async with http.get(made.url + "/v1/models/mine:latest") as response:
        assert response.status == 200 and response.headers["X-Sollol-Node"] == "a"
    await body_of(http, "DELETE", a.url + "/api/delete", b'{"model":"mine"}')
    await body_of(http, "DELETE", a.url + "/api/delete", b'{"model":"llama3.2"}')
    await body_of(http, "DELETE", b.url + "/api/delete", b'{"model":"qwen2.5:7b"}')
    # An emptied fleet answers as an empty Ollama does, not with the last models it saw.
    for path in ("/api/tags", "/v1/models"):
        assert await body_of(http, "GET", made.url + path) == await body_of(
            http, "GET", a.url + path
        )
    assert await body_of(http, "GET", made.url + "/v1/models") == (
        b'{"object":"list","data":null}\n'
    )
    async with (
        http.get(made.url + "/v1/models/mine:latest") as response,
        http.get(a.url + "/v1/models/mine:latest") as direct,
    ):
        assert (response.status, await response.read()) == (404, await direct.read())


async def test_ps_is_live(cluster: ClusterFactory, http: aiohttp.ClientSession) -> None:
    made = await cluster(dict(name="a", models=[MODEL]), health__interval=60)
    node = made.node("a")
    await body_of(http, "POST", node.url + "/api/generate", b'{"model":"llama3.2"}')  # a load
    assert await body_of(http, "GET", made.url + "/api/ps") == await body_of(
        http, "GET", node.url + "/api/ps"
    )
    assert MODEL in made.fleet.nodes["a"].loaded  # for routing too


# -- a node slower than the view's timeout ------------------------------------------------------


class SlowTags:
    """A node whose /api/tags takes `delay` seconds (probes answer at once); counts the reads."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.reads = 0
        self.models = [
            {"name": "slow:1b", "model": "slow:1b", "modified_at": "2025-01-01T00:00:00Z"}
        ]

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/api/version":
            return web.json_response({"version": "0.33.0-rc2"})
        if request.path == "/api/ps":
            return web.json_response({"models": []})
        self.reads += 1
        await asyncio.sleep(self.delay)
        return web.json_response({"models": self.models})


@dataclass
class SlowFleet:
    url: str
    slow: SlowTags
    inventory: LiveInventory


@pytest.fixture
async def slow_fleet() -> AsyncIterator[SlowFleet]:
    """The proxy in front of a simulated node `a` and the slow node `b`; views wait 0.3 s."""
    slow = SlowTags()
    app = web.Application()
    app.router.add_get("/{path:.*}", slow.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with SimulatedNode(name="a", models=[MODEL], deterministic=True) as fast:
        overrides = {
            **TEST_SETTINGS,
            "nodes": [fast.url, f"http://127.0.0.1:{port}"],
            "inventory.interval": NEVER,
            "inventory.view_timeout": 0.3,
        }
        proxy = await start_proxy(load_config(None, env={}, overrides=overrides))
        try:
            yield SlowFleet(proxy.url, slow, proxy.runner.app[INVENTORY])
        finally:
            await proxy.stop()
    await runner.cleanup()


async def test_a_node_that_does_not_answer_in_time_gives_its_last_known_list(
    slow_fleet: SlowFleet, http: aiohttp.ClientSession
) -> None:
    slow_fleet.slow.delay = 2.0
    slow_fleet.slow.models = []  # it changed, but will not say so in time
    async with http.get(slow_fleet.url + "/api/tags") as response:
        names = [m["name"] for m in orjson.loads(await response.read())["models"]]
        fast, slow = response.headers["X-Sollol-Node"], response.headers["X-Sollol-Stale"]
        assert response.headers["X-Sollol-Route"] == (
            f"fleet view: 1 of 2 reachable nodes answered live; {slow}: last known list (timed out)"
        )
    assert fast != slow and slow.startswith("127.0.0.1:")
    assert names == ["llama3.2:latest", "slow:1b"]


async def test_concurrent_views_share_one_read_and_invalidate_starts_a_new_one(
    slow_fleet: SlowFleet, http: aiohttp.ClientSession
) -> None:
    slow = slow_fleet.slow
    slow.delay = 0.2

    async def tags() -> bytes:
        async with http.get(slow_fleet.url + "/api/tags") as response:
            return await response.read()

    before = slow.reads
    answers = await asyncio.gather(*(tags() for _ in range(10)))
    assert len(set(answers)) == 1
    assert slow.reads - before == 1  # ten clients, one read of the node
    before = slow.reads
    first = asyncio.ensure_future(tags())
    await eventually(lambda: slow.reads > before)  # that read is under way ...
    slow_fleet.inventory.invalidate()  # ... when a management call changes the nodes
    await asyncio.gather(first, tags())
    assert slow.reads - before == 2  # the view asked after it did not join the older read


async def test_version_and_root_say_where_they_come_from(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[], version="0.12.3"), dict(name="b", models=[], version="0.33.0")
    )
    async with http.get(made.url + "/api/version") as response:
        assert await response.read() == b'{"version":"0.12.3"}'
        assert response.headers["X-Sollol-Node"] == "a,b"
        assert response.headers["X-Sollol-Route"] == "fleet view: the oldest version of 2 nodes"
    async with http.get(made.url + "/") as response:
        assert response.headers["X-Sollol-Route"] == "answered by the proxy"
        assert "X-Sollol-Node" not in response.headers


@pytest.mark.parametrize(
    ("versions", "oldest"),
    [
        (("0.10.0", "0.9.6"), "0.9.6"),
        (("0.33.0", "0.33.0-rc2"), "0.33.0-rc2"),
        (("0.33.0-rc10", "0.33.0-rc2"), "0.33.0-rc2"),
        (("0.5.1-beta", "0.5.1-alpha"), "0.5.1-alpha"),
        (("0.5.1", "0.5.1-rc1", "0.5.0"), "0.5.0"),
    ],
)
def test_the_oldest_version_counts_a_pre_release_before_its_release(
    versions: tuple[str, ...], oldest: str
) -> None:
    for listed in (versions, versions[::-1]):  # not the first node listed on a tie
        nodes = []
        for i, number in enumerate(listed):
            node = NodeState(NodeConfig(url=f"http://127.0.0.1:{i + 1}", name=f"n{i}"))
            node.version = number
            nodes.append(node)
        response, _ = views.version(nodes)
        assert response.body == b'{"version":"' + oldest.encode() + b'"}'
