"""pull / rm / cp / create / push through the proxy leave the fleet as the user expects."""

from __future__ import annotations

import hashlib
import logging

import aiohttp
import orjson
import pytest

from tests.conftest import ClusterFactory, eventually


def lines(body: bytes) -> list[dict]:
    return [orjson.loads(line) for line in body.splitlines()]


async def test_pull_lands_on_every_healthy_node_and_is_usable_at_once(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[]), dict(name="b", models=[]), inventory__interval=3600
    )
    async with http.post(made.url + "/api/pull", data=b'{"model":"qwen2.5:7b"}') as response:
        assert response.headers["Content-Type"] == "application/x-ndjson"
        assert response.headers["X-Sollol-Node"] == "a,b"
        body = await response.read()
    statuses = [line["status"] for line in lines(body)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert statuses.count("success") == 1
    # The client saw the first node's own bytes, in order.
    assert (
        body
        == made.nodes[0]
        .responses[[r.path for r in made.nodes[0].responses].index("/api/pull")]
        .body
    )
    assert all(node.has_model("qwen2.5:7b") for node in made.nodes)
    # No wait for the background inventory: the proxy re-read it before sending "success".
    async with http.get(made.url + "/api/tags") as r:
        assert [m["name"] for m in orjson.loads(await r.read())["models"]] == ["qwen2.5:7b"]
    async with http.post(
        made.url + "/api/chat", data=b'{"model":"qwen2.5:7b","messages":[],"stream":false}'
    ) as r:
        assert r.status == 200


async def test_pull_without_stream_and_pinned_to_one_node(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[]), dict(name="b", models=[]))
    async with http.post(
        made.url + "/api/pull",
        data=b'{"name":"mistral","stream":false}',
        headers={"X-Sollol-Node": "b"},
    ) as r:
        assert (r.status, await r.read()) == (200, b'{"status":"success"}')
        assert r.headers["Content-Type"] == "application/json"
    assert not made.node("a").has_model("mistral:latest") and made.node("b").has_model(
        "mistral:latest"
    )


async def test_pull_of_an_unknown_model_reports_ollamas_error(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[]), dict(name="b", models=[]))
    async with http.post(made.url + "/api/pull", data=b'{"model":"no-such-model"}') as r:
        body = await r.read()
    assert r.status == 200
    assert lines(body) == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    async with http.post(
        made.url + "/api/pull",
        data=b'{"model":"no-such-model","stream":false}',
        headers={"X-Sollol-Node": "a"},
    ) as r:
        assert (
            r.status == 500
            and await r.read() == b'{"error":"pull model manifest: file does not exist"}'
        )


async def test_pull_that_fails_on_one_node_says_which(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[]), dict(name="b", models=[]))
    made.node("b").faults.reset_after_chunks = 1
    async with http.post(made.url + "/api/pull", data=b'{"model":"qwen2.5:7b"}') as r:
        parsed = lines(await r.read())
    assert "success" not in [p.get("status") for p in parsed]
    assert parsed[-1]["error"].startswith("node b: ")
    assert parsed[-1]["error"].endswith("(succeeded on a)")


class _AtTheEnd(logging.Handler):
    """Reads the fleet's in-flight counts the moment a request's access line is written, which
    is the moment its handler has ended."""

    def __init__(self, made: object) -> None:
        super().__init__()
        self.made = made
        self.seen: list[dict[str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        nodes = self.made.fleet.nodes  # type: ignore[attr-defined]
        self.seen.append({name: node.in_flight for name, node in nodes.items()})


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
async def test_a_client_gone_mid_pull_everywhere_leaves_no_secondary_running(
    cluster: ClusterFactory,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    engine: str,
) -> None:
    # Both nodes pull slowly, so the client leaves while each still streams. The secondary's
    # request is cancelled and awaited before the handler ends: none is left pending (asyncio's
    # "Task was destroyed but it is pending" at shutdown) still holding node b.
    made = await cluster(
        dict(name="a", models=[], token_delay=0.3),
        dict(name="b", models=[], token_delay=0.3),
        listen__engine=engine,
    )
    caplog.set_level(logging.INFO, logger="sollol.access")
    at_the_end = _AtTheEnd(made)
    logging.getLogger("sollol.access").addHandler(at_the_end)
    try:
        async with http.post(
            made.url + "/api/pull",
            data=b'{"model":"qwen2.5:7b"}',
            headers={"X-Sollol-Node": "all"},
        ) as r:
            assert r.headers["X-Sollol-Node"] == "a,b"
            assert b"pulling manifest" in await r.content.readline()
            await eventually(lambda: made.fleet.nodes["b"].in_flight == 1)
            r.close()  # the client goes away mid-stream
        await eventually(lambda: bool(at_the_end.seen))
    finally:
        logging.getLogger("sollol.access").removeHandler(at_the_end)
    assert at_the_end.seen == [{"a": 0, "b": 0}]


async def test_rm_removes_the_model_everywhere(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest", "qwen2.5:7b"]),
        dict(name="b", models=["llama3.2:latest"]),
        dict(name="c", models=["qwen2.5:7b"]),
    )
    async with http.delete(made.url + "/api/delete", data=b'{"model":"llama3.2"}') as r:
        assert (r.status, await r.read()) == (200, b"")
        assert "Content-Type" not in r.headers
        assert r.headers["X-Sollol-Node"] == "a,b"
    assert [n.has_model("llama3.2:latest") for n in made.nodes] == [False, False, False]
    assert made.node("c").requests[-1].path != "/api/delete"
    async with http.delete(made.url + "/api/delete", data=b'{"model":"llama3.2"}') as r:
        assert (r.status, await r.read()) == (404, b'{"error":"model \'llama3.2\' not found"}')
    async with http.post(made.url + "/api/show", data=b'{"model":"llama3.2"}') as r:
        assert r.status == 404


async def test_cp_copies_on_every_node_that_has_the_source(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]),
        dict(name="b", models=["llama3.2:latest"]),
        dict(name="c", models=[]),
    )
    async with http.post(
        made.url + "/api/copy", data=b'{"source":"llama3.2","destination":"backup"}'
    ) as r:
        assert (r.status, await r.read()) == (200, b"")
    assert [n.has_model("backup:latest") for n in made.nodes] == [True, True, False]
    async with http.post(
        made.url + "/api/generate", data=b'{"model":"backup","stream":false}'
    ) as r:
        assert r.status == 200 and r.headers["X-Sollol-Node"] in ("a", "b")
    async with http.post(made.url + "/api/copy", data=b'{"source":"ghost","destination":"x"}') as r:
        assert (r.status, await r.read()) == (404, b'{"error":"model \\"ghost\\" not found"}')


async def test_create_from_uploaded_blobs_lands_on_one_consistent_node(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[]), dict(name="b", models=[]), dict(name="c", models=[])
    )
    made.fleet.nodes["a"].in_flight += 5  # load must not move the blob away from its create
    gguf = b"GGUF" + b"\0" * 4096
    digest = "sha256:" + hashlib.sha256(gguf).hexdigest()
    async with http.head(f"{made.url}/api/blobs/{digest}") as r:
        assert r.status == 404
    async with http.post(f"{made.url}/api/blobs/{digest}", data=gguf) as r:
        assert r.status == 201
        placed = r.headers["X-Sollol-Node"]
    body = orjson.dumps({"model": "mine", "files": {"model.gguf": digest}})
    async with http.post(made.url + "/api/create", data=body) as r:
        assert lines(await r.read())[-1] == {"status": "success"}
        assert r.headers["X-Sollol-Node"] == placed
    made.fleet.nodes["a"].in_flight -= 5
    assert placed == "a" and made.node("a").has_model("mine:latest")
    async with http.post(
        made.url + "/api/chat", data=b'{"model":"mine","messages":[],"stream":false}'
    ) as r:
        assert r.status == 200 and r.headers["X-Sollol-Node"] == "a"


async def test_create_from_a_base_model_goes_where_the_base_is(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[]), dict(name="b", models=["llama3.2:latest"]))
    body = b'{"model":"pirate","from":"llama3.2","system":"Arr.","stream":false}'
    async with http.post(made.url + "/api/create", data=body) as r:
        assert (r.status, await r.read()) == (200, b'{"status":"success"}')
        assert r.headers["X-Sollol-Node"] == "b"
    assert made.node("b").has_model("pirate:latest")


async def test_create_everywhere_with_the_all_header(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]), dict(name="b", models=["llama3.2:latest"])
    )
    body = b'{"model":"pirate","from":"llama3.2"}'
    async with http.post(
        made.url + "/api/create", data=body, headers={"X-Sollol-Node": "all"}
    ) as r:
        assert lines(await r.read())[-1] == {"status": "success"}
    assert all(n.has_model("pirate:latest") for n in made.nodes)


async def test_push_goes_to_a_node_with_the_model(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[]), dict(name="b", models=["someone/tuned:latest"]))
    async with http.post(made.url + "/api/push", data=b'{"model":"someone/tuned"}') as r:
        assert lines(await r.read())[-1] == {"status": "success"}
        assert r.headers["X-Sollol-Node"] == "b"
