"""Fleet-wide views and routing by model across several nodes."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from sollol_proxy.simulator import SimModel
from tests.conftest import ClusterFactory, eventually


def model(name: str, modified_at: str, digest: str | None = None) -> SimModel:
    kwargs = {"digest": digest} if digest else {}
    return SimModel(name=name, modified_at=modified_at, **kwargs)


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, bytes]:
    async with http.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


async def test_tags_is_the_union_newest_first_without_duplicates(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(
            name="a",
            models=[
                model("llama3.2:latest", "2025-01-01T10:00:00.5-07:00"),
                model("old:1b", "2024-01-01T00:00:00Z"),
            ],
        ),
        dict(
            name="b",
            models=[
                model("llama3.2:latest", "2025-01-01T10:00:00.5-07:00"),
                model("new:7b", "2026-01-01T00:00:00Z"),
            ],
        ),
        dict(name="c", models=[model("mid:3b", "2025-06-01T00:00:00.123456789+02:00")]),
    )
    status, ctype, body = await get(http, made.url + "/api/tags")
    assert (status, ctype) == (200, "application/json; charset=utf-8")
    names = [m["name"] for m in orjson.loads(body)["models"]]
    assert names == ["new:7b", "mid:3b", "llama3.2:latest", "old:1b"]
    # Same schema and byte style as one node's own answer: each item exactly as the node wrote it.
    async with http.get(made.node("c").url + "/api/tags") as direct:
        node_item = (await direct.read())[len(b'{"models":[') : -2]
    assert node_item in body and not body.endswith(b"\n")
    async with http.head(made.url + "/api/tags") as head:
        assert head.status == 200 and head.headers["Content-Length"] == str(len(body))


async def test_v1_models_and_version_for_the_fleet(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[model("llama3.2:latest", "2025-01-01T00:00:00Z")], version="0.12.3"),
        dict(
            name="b",
            models=[model("someone/tuned:q4", "2025-02-01T00:00:00Z")],
            version="0.33.0-rc2",
        ),
    )
    status, ctype, body = await get(http, made.url + "/v1/models")
    assert (status, ctype) == (200, "application/json")
    assert body == (
        b'{"object":"list","data":[{"id":"someone/tuned:q4","object":"model","created":1738368000,"owned_by":"someone"},'
        b'{"id":"llama3.2:latest","object":"model","created":1735689600,"owned_by":"library"}]}\n'
    )
    status, ctype, body = await get(http, made.url + "/api/version")
    assert body == b'{"version":"0.12.3"}'  # the oldest: promise only what every node can do


async def test_ps_merges_loaded_models_latest_expiry_first(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest", "qwen2.5:7b"]),
        dict(name="b", models=["llama3.2:latest"]),
    )
    for node, body in (
        ("a", b'{"model":"qwen2.5:7b","keep_alive":60}'),
        ("b", b'{"model":"llama3.2","keep_alive":-1}'),
        ("a", b'{"model":"llama3.2","keep_alive":10}'),
    ):
        async with http.post(made.node(node).url + "/api/generate", data=body) as response:
            assert response.status == 200
    await made.fleet.refresh_all()
    body = (await get(http, made.url + "/api/ps"))[2]
    items = orjson.loads(body)["models"]
    assert [m["name"] for m in items] == ["llama3.2:latest", "qwen2.5:7b"]
    assert items[0]["expires_at"].startswith("23")  # keep_alive -1 on b wins over 10s on a
    # Pinned to one node, the node's own view comes back unchanged.
    async with (
        http.get(made.url + "/api/ps", headers={"X-Sollol-Node": "a"}) as response,
        http.get(made.node("a").url + "/api/ps") as direct,
    ):
        assert await response.read() == await direct.read()


async def test_empty_fleet_answers_like_an_empty_ollama(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[]))
    assert (await get(http, made.url + "/api/tags"))[2] == b'{"models":[]}'
    assert (await get(http, made.url + "/api/ps"))[2] == b'{"models":[]}'
    assert (await get(http, made.url + "/v1/models"))[2] == b'{"object":"list","data":null}\n'
    async with http.head(made.url + "/") as response:
        assert (
            response.status == 200
            and response.headers["Content-Type"] == "text/plain; charset=utf-8"
        )


async def test_requests_go_only_to_nodes_that_have_the_model(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]),
        dict(name="b", models=["qwen2.5:7b", "llama3.2:latest"]),
        dict(name="c", models=["all-minilm:latest"]),
    )
    for _ in range(6):
        async with http.post(
            made.url + "/api/chat",
            data=b'{"model":"qwen2.5:7b","messages":[{"role":"user","content":"x"}],"stream":false}',
        ) as r:
            assert r.headers["X-Sollol-Node"] == "b"
        async with http.post(
            made.url + "/api/embed", data=b'{"model":"all-minilm","input":"x"}'
        ) as r:
            assert r.headers["X-Sollol-Node"] == "c"

    served = set()
    for _ in range(12):
        async with http.post(
            made.url + "/api/generate", data=b'{"model":"llama3.2","prompt":"x","stream":false}'
        ) as r:
            served.add(r.headers["X-Sollol-Node"])
    assert served <= {"a", "b"}


async def test_concurrent_requests_spread_by_in_flight(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"], token_delay=0.05),
        dict(name="b", models=["llama3.2:latest"], token_delay=0.05),
    )
    body = b'{"model":"llama3.2","prompt":"x","stream":false,"options":{"num_predict":6}}'

    async def one() -> str:
        async with http.post(made.url + "/api/generate", data=body) as r:
            await r.read()
            return r.headers["X-Sollol-Node"]

    nodes = await asyncio.gather(*(one() for _ in range(4)))
    assert sorted(nodes) == ["a", "a", "b", "b"]


async def test_model_nobody_has_gets_ollamas_own_404(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    async with http.post(made.url + "/api/chat", data=b'{"model":"ghost","messages":[]}') as r:
        assert r.status == 404 and await r.read() == b'{"error":"model \'ghost\' not found"}'
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        assert r.headers["X-Sollol-Route"] == "no node has the model; least loaded, 0/1 slots busy"
    async with http.post(made.url + "/api/embed", data=b'{"model":"ghost","input":"x"}') as r:
        assert (
            r.status == 404
            and await r.read() == b'{"error":"model \\"ghost\\" not found, try pulling it first"}'
        )
    async with http.post(
        made.url + "/v1/chat/completions",
        data=b'{"model":"ghost","messages":[{"role":"user","content":"x"}]}',
    ) as r:
        assert (
            r.status == 404 and orjson.loads(await r.read())["error"]["type"] == "not_found_error"
        )


async def test_model_added_behind_the_proxys_back_is_found_on_demand(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[]), dict(name="b", models=[]), inventory__interval=3600
    )
    async with http.post(
        made.node("b").url + "/api/pull", data=b'{"model":"qwen2.5:7b","stream":false}'
    ) as r:
        assert r.status == 200
    async with http.post(
        made.url + "/api/chat", data=b'{"model":"qwen2.5:7b","messages":[],"stream":false}'
    ) as r:
        assert r.status == 200 and r.headers["X-Sollol-Node"] == "b"


async def test_no_healthy_node_is_a_503_that_says_why(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]), dict(name="b", models=["qwen2.5:7b"])
    )
    await made.node("b").stop()
    await made.fleet.refresh_all()
    async with http.post(made.url + "/api/chat", data=b'{"model":"qwen2.5:7b","messages":[]}') as r:
        assert r.status == 503 and r.headers["Content-Type"] == "application/json; charset=utf-8"
        message = orjson.loads(await r.read())["error"]
        assert message.startswith(
            "model 'qwen2.5:7b' is only on nodes that are down (b: cannot connect"
        )
    await made.node("a").stop()
    await made.fleet.refresh_all()
    async with http.post(made.url + "/api/chat", data=b'{"model":"llama3.2","messages":[]}') as r:
        assert r.status == 503
        assert orjson.loads(await r.read())["error"].startswith(
            "model 'llama3.2:latest' is only on nodes that are down (a: "
        )
    async with http.post(made.url + "/api/chat", data=b'{"model":"ghost","messages":[]}') as r:
        assert (
            r.status == 503
            and "no healthy Ollama node (a: cannot connect" in orjson.loads(await r.read())["error"]
        )
    async with http.post(
        made.url + "/v1/chat/completions", data=b'{"model":"ghost","messages":[]}'
    ) as r:
        assert r.status == 503 and orjson.loads(await r.read())["error"]["type"] == "api_error"
    async with http.get(made.url + "/api/tags") as r:
        assert await r.read() == b'{"models":[]}'


async def test_pinning_rules(cluster: ClusterFactory, http: aiohttp.ClientSession) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]), dict(name="b", models=["llama3.2:latest"])
    )
    for _ in range(4):
        async with http.post(
            made.url + "/api/generate", data=b'{"model":"llama3.2"}', headers={"X-Sollol-Node": "b"}
        ) as r:
            assert r.headers["X-Sollol-Node"] == "b"
    async with http.post(
        made.url + "/api/generate", data=b'{"model":"llama3.2"}', headers={"X-Sollol-Node": "zz"}
    ) as r:
        assert r.status == 400
        assert orjson.loads(await r.read()) == {
            "error": "X-Sollol-Node names unknown node 'zz' (known: a, b)"
        }
    async with http.post(
        made.url + "/api/generate", data=b'{"model":"llama3.2"}', headers={"X-Sollol-Node": "all"}
    ) as r:
        assert r.status == 400
    # Several names: tried in that order, so the next one takes over when the first fails.
    made.node("b").faults.refuse = True
    async with http.post(
        made.url + "/api/generate",
        data=b'{"model":"llama3.2","stream":false}',
        headers={"X-Sollol-Node": "b,a"},
    ) as r:
        assert r.status == 200 and r.headers["X-Sollol-Node"] == "a", await r.text()
        assert r.headers["X-Sollol-Route"].startswith("pinned by X-Sollol-Node (after b: ")


async def test_background_watcher_notices_a_node_leave_and_come_back(
    cluster: ClusterFactory,
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]), dict(name="b", models=["llama3.2:latest"])
    )
    b = made.fleet.nodes["b"]
    assert b.healthy
    made.node("b").faults.refuse = True
    await eventually(lambda: not b.healthy)
    made.node("b").faults.refuse = False
    await eventually(lambda: b.healthy)
