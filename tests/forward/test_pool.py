"""The lean node client (forward/pool.py, with listen.engine: fast): what the node receives is
what the aiohttp session sent, and pooled connections survive what nodes do to them."""

from __future__ import annotations

import aiohttp

from sollol_proxy.app import POOL
from tests.conftest import ClusterFactory

MODEL = "llama3.2:latest"
CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'


async def test_the_node_receives_the_same_request_from_both_engines(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    seen = {}
    for engine in ("fast", "aiohttp"):
        made = await cluster(dict(name="a", models=[MODEL]), listen__engine=engine)
        headers = {
            "X-Custom": "kept",
            "Connection": "keep-alive, X-Hop",  # X-Hop names a hop-by-hop field: dropped
            "X-Hop": "dropped",
            "X-Sollol-Priority": "high",  # the proxy's own: not forwarded
            "Content-Type": "application/json",
        }
        async with http.post(made.url + "/api/chat", data=CHAT, headers=headers) as response:
            assert response.status == 200
            await response.read()
        request = made.node("a").requests[-1]
        assert request.headers["Host"] == made.nodes[0].url.removeprefix("http://")
        fields = sorted((k.lower(), v) for k, v in request.headers.items() if k != "Host")
        seen[engine] = (request.method, request.path, request.query_string, fields, request.body)
    assert seen["fast"] == seen["aiohttp"]
    method, path, _, fields, body = seen["fast"]
    assert (method, path, body) == ("POST", "/api/chat", CHAT)
    assert ("x-custom", "kept") in fields and ("x-forwarded-for", "127.0.0.1") in fields
    assert not any(name in ("x-hop", "x-sollol-priority", "connection") for name, _ in fields)


async def test_a_node_restart_drops_pooled_connections_and_the_next_request_reconnects(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]))
    pool = made.proxy.runner.app[POOL]
    async with http.post(made.url + "/api/chat", data=CHAT) as response:
        assert response.status == 200
        await response.read()
    assert sum(len(idle) for idle in pool._idle.values()) == 1
    await made.node("a").restart()  # its connections drop, the pooled one included
    async with http.post(made.url + "/api/chat", data=CHAT) as response:
        assert response.status == 200
        assert b'"done":true' in await response.read()
