"""The simulated node answers CORS as Ollama does (reference 1.6), middleware order included."""

from __future__ import annotations

import aiohttp

from sollol_proxy.simulator import SimulatedNode
from sollol_proxy.wire.cors import ALLOW_HEADERS, CorsPolicy

ORIGIN = "http://localhost:3000"


async def test_preflight_forbidden_and_allowed_answers() -> None:
    async with SimulatedNode(models=["llama3.2:latest"]) as node, aiohttp.ClientSession() as http:
        # A preflight on a GET-only path: gin's 405 sets Allow before the CORS middleware's 204.
        async with http.options(
            node.url + "/api/tags",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
        ) as r:
            assert r.status == 204 and await r.read() == b""
            assert r.headers["Allow"] == "HEAD, GET"
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert r.headers["Access-Control-Allow-Headers"] == ALLOW_HEADERS
            assert r.headers["Access-Control-Max-Age"] == "43200"
            assert r.headers.getall("Vary") == [
                "Origin",
                "Access-Control-Request-Method",
                "Access-Control-Request-Headers",
            ]
            assert "Content-Type" not in r.headers
        async with http.get(node.url + "/api/tags", headers={"Origin": "http://evil"}) as r:
            assert (r.status, await r.read(), r.headers.get("Content-Type")) == (403, b"", None)
            assert "Access-Control-Allow-Origin" not in r.headers
        async with http.get(node.url + "/api/tags", headers={"Origin": ORIGIN}) as r:
            assert r.status == 200 and r.headers.getall("Vary") == ["Origin"]
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        # Streams carry them too: they are written before the first line.
        body = b'{"model":"llama3.2","prompt":"hi"}'
        async with http.post(
            node.url + "/api/generate", data=body, headers={"Origin": ORIGIN}
        ) as r:
            assert r.headers["Content-Type"] == "application/x-ndjson"
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_cors_runs_before_the_host_check_and_after_redirects() -> None:
    async with SimulatedNode() as node, aiohttp.ClientSession() as http:
        foreign = {"Host": "evil.example", "Origin": ORIGIN}
        async with http.get(node.url + "/api/version", headers=foreign) as r:
            # Host refused (403), with the CORS headers CORS wrote before the Host check ran.
            assert r.status == 403 and r.headers["Access-Control-Allow-Origin"] == ORIGIN
        async with http.options(node.url + "/api/version", headers=foreign) as r:
            assert r.status == 204  # a preflight is answered before the Host check
        async with http.post(node.url + "/api/tags", headers={"Host": "evil.example"}) as r:
            # gin set the 405's Allow before its middleware refused the Host.
            assert (r.status, r.headers["Allow"], await r.read()) == (403, "HEAD, GET", b"")
        async with http.get(
            node.url + "/api/tags/", headers={"Origin": "http://evil"}, allow_redirects=False
        ) as r:
            assert r.status == 301  # gin redirects before any middleware


async def test_ollama_origins_of_the_node() -> None:
    async with SimulatedNode() as node, aiohttp.ClientSession() as http:
        node.cors = CorsPolicy.from_origins(["*"])
        async with http.get(node.url + "/api/version", headers={"Origin": "http://evil"}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
            assert "Vary" not in r.headers
