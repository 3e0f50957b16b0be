"""A large embedding call spread over the fleet, over real sockets: the answer is the one a
single node gives (vectors, order, counts, shape), failures never leak a partial result, and
what the proxy may not cut reaches a node untouched."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import aiohttp
import orjson

from sollol_proxy.simulator import SimulatedNode
from sollol_proxy.wire.cors import CorsPolicy
from tests.conftest import ClusterFactory, eventually

MODEL = "all-minilm"
NODES = ("a", "b", "c", "d")


def _docs(count: int, prefix: str = "doc") -> list[str]:
    return [f"{prefix} {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(count)]


async def _fleet(cluster: ClusterFactory, **settings: Any) -> Any:
    specs = [
        dict(name=n, models=[MODEL], prompt_tokens_per_s=20000.0, deterministic=True) for n in NODES
    ]
    return await cluster(*specs, **settings)


async def _post(
    http: aiohttp.ClientSession, url: str, payload: Any, headers: dict[str, str] | None = None
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    async with http.post(url, data=body, headers=headers) as response:
        return response.status, await response.read(), response


def _without_times(body: bytes) -> dict[str, Any]:
    parsed = orjson.loads(body)
    parsed.pop("total_duration", None)
    parsed.pop("load_duration", None)
    return parsed


async def test_a_split_answer_equals_one_nodes_answer(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster)
    request = {"model": MODEL, "input": _docs(200), "dimensions": 16}
    status, body, response = await _post(http, c.url + "/api/embed", request)
    direct_status, direct, _ = await _post(http, c.nodes[0].url + "/api/embed", request)
    assert status == direct_status == 200
    assert len(set(response.headers["X-Sollol-Node"].split(","))) > 1
    assert response.headers["X-Sollol-Route"].startswith("embed split: 200 inputs in ")
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Transfer-Encoding"] == "chunked"  # over 2048 bytes, as net/http
    # Go's field order and exactly its keys; the vectors are the node's very bytes
    assert list(orjson.loads(body)) == list(orjson.loads(direct))
    assert _without_times(body) == _without_times(direct)
    start, end = body.index(b'"embeddings":'), body.index(b',"total_duration"')
    assert body[start:end] == direct[direct.index(b'"embeddings":') : direct.index(b',"total')]
    assert orjson.loads(body)["total_duration"] > 0
    served = sum(n.stats.requests for n in c.nodes) - 1  # minus the direct call
    assert served > 4  # several sub-batches


async def test_a_split_v1_answer_equals_one_nodes_answer(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster)
    request = {"model": MODEL, "input": _docs(120), "encoding_format": "base64"}
    status, body, response = await _post(http, c.url + "/v1/embeddings", request)
    direct_status, direct, direct_response = await _post(
        http, c.nodes[1].url + "/v1/embeddings", request
    )
    assert status == direct_status == 200
    assert "," in response.headers["X-Sollol-Node"]
    assert response.headers["Content-Type"] == direct_response.headers["Content-Type"]
    assert body == direct  # nothing in the /v1 answer depends on time: the very same bytes
    data = orjson.loads(body)["data"]
    assert [item["index"] for item in data] == list(range(120))


async def test_a_small_call_passes_through_byte_for_byte(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster)
    raw = b'{"input":  ["one", "two"] ,"model":"all-minilm"}'
    status, body, response = await _post(http, c.url + "/api/embed", raw)
    assert status == 200
    node = c.node(response.headers["X-Sollol-Node"])
    assert [r for r in node.requests if r.path == "/api/embed"][-1].body == raw  # not rebuilt
    assert body == [r for r in node.responses if r.path == "/api/embed"][-1].body


async def test_wrong_input_types_get_ollamas_own_400(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster)
    for path, payload in (
        ("/api/embed", {"model": MODEL, "input": [*_docs(100), 7]}),
        ("/api/embed", {"model": MODEL, "input": {"text": "x"}}),
        ("/v1/embeddings", {"model": MODEL, "input": [*_docs(100), None]}),
        ("/api/embed", {"model": MODEL, "input": _docs(100), "dimensions": "8"}),
    ):
        status, body, response = await _post(http, c.url + path, payload)
        direct_status, direct, direct_response = await _post(http, c.nodes[0].url + path, payload)
        assert (status, body) == (direct_status, direct), (path, payload)
        assert status == 400
        assert response.headers["Content-Type"] == direct_response.headers["Content-Type"]


async def test_a_node_failing_mid_split_leaves_no_gap(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster, routing__max_attempts=4)
    c.node("c").faults.status_error = (500, "an error was encountered while running the model")
    c.node("d").faults.reset_before_headers = True
    request = {"model": MODEL, "input": _docs(300)}
    status, body, response = await _post(http, c.url + "/api/embed", request)
    assert status == 200, body
    direct = (await _post(http, c.nodes[0].url + "/api/embed", request))[1]
    assert _without_times(body) == _without_times(direct)
    assert set(response.headers["X-Sollol-Node"].split(",")) <= {"a", "b"}


async def test_a_node_killed_during_a_split(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster, routing__max_attempts=4)
    for node in c.nodes:
        node.prompt_tokens_per_s = 2000.0  # slow enough to be caught mid-answer
    request = {"model": MODEL, "input": _docs(400)}

    async def kill_soon(node: SimulatedNode) -> None:
        await eventually(lambda: node.in_flight() > 0, within=10)
        await node.stop()

    killer = asyncio.create_task(kill_soon(c.node("b")))
    status, body, _ = await _post(http, c.url + "/api/embed", request)
    await killer
    assert status == 200, body
    direct = (await _post(http, c.nodes[0].url + "/api/embed", request))[1]
    assert _without_times(body) == _without_times(direct)


async def test_when_no_node_can_answer_the_client_gets_one_error(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster, routing__max_attempts=1)
    for node in c.nodes:
        node.faults.status_error = (500, "an error was encountered while running the model")
    request = {"model": MODEL, "input": _docs(64)}
    status, body, response = await _post(http, c.url + "/api/embed", request)
    assert status == 500  # the whole call, sent as it is once a part failed: a node's own answer
    assert body == b'{"error":"an error was encountered while running the model"}'
    served = c.node(response.headers["X-Sollol-Node"])
    assert orjson.loads([r for r in served.requests if r.path == "/api/embed"][-1].body) == request


async def test_a_request_error_is_ollamas_answer_for_the_whole_call(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster)
    docs = _docs(100)
    docs[57] = "word " * 3000  # over all-minilm's 512-token context
    request = {"model": MODEL, "input": docs, "truncate": False}
    status, body, _ = await _post(http, c.url + "/api/embed", request)
    direct_status, direct, _ = await _post(http, c.nodes[0].url + "/api/embed", request)
    assert (
        (status, body)
        == (direct_status, direct)
        == (
            400,
            b'{"error":"the input length exceeds the context length"}',
        )
    )


async def test_what_the_proxy_cannot_read_as_ollama_does_goes_whole_and_untouched(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster)
    docs = _docs(100)
    cases = [
        (orjson.dumps({"model": MODEL, "Input": docs}), {}),  # Go reads "Input" as input
        (orjson.dumps({"model": MODEL, "input": docs}), {"X-Sollol-Node": "c"}),  # pinned
        (
            gzip.compress(orjson.dumps({"model": MODEL, "input": docs})),
            {"Content-Encoding": "gzip"},
        ),
    ]
    for raw, headers in cases:
        before = {n.name: len(n.requests) for n in c.nodes}
        _, body, response = await _post(http, c.url + "/api/embed", raw, headers)
        node = c.node(response.headers["X-Sollol-Node"])  # one node, not a list of them
        sent = [r for r in node.requests[before[node.name] :] if r.path == "/api/embed"]
        assert [r.body for r in sent] == [raw], headers
        assert body == [r for r in node.responses if r.path == "/api/embed"][-1].body
        others = [n for n in c.nodes if n is not node]
        assert all(
            not [r for r in n.requests[before[n.name] :] if r.path == "/api/embed"] for n in others
        )


async def test_a_split_answer_carries_the_nodes_cors_verdict(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    """The nodes saw the client's Origin on every sub-batch and allowed it: the answer has
    their CORS headers once, as one node's answer would (the proxy's own list is not asked)."""
    c = await _fleet(cluster)
    for node in c.nodes:
        node.cors = CorsPolicy.from_origins(["https://app.example"])
    origin = {"Origin": "https://app.example"}
    request = {"model": MODEL, "input": _docs(100)}
    status, _, response = await _post(http, c.url + "/api/embed", request, origin)
    _, _, direct = await _post(http, c.nodes[0].url + "/api/embed", request, origin)
    assert status == 200 and "," in response.headers["X-Sollol-Node"]
    for name in ("Access-Control-Allow-Origin", "Vary"):
        assert response.headers.getall(name) == direct.headers.getall(name), name
