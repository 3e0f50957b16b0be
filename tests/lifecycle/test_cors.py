"""CORS through the proxy, byte for byte against a simulated node that answers CORS as Ollama does.

What the proxy answers itself (fleet views, its own errors, preflights on those paths) gets its
own verdict from `cors.origins`; what a node answers keeps the node's CORS headers.
"""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from sollol_proxy.config import ConfigError, load_config
from sollol_proxy.wire.cors import CorsPolicy
from tests.conftest import ClusterFactory

MODELS = ["llama3.2:latest", "all-minilm:latest"]
ALLOWED = "http://localhost:3000"
FORBIDDEN = "http://evil.example"
VOLATILE = {
    "date",
    "x-sollol-node",
    "x-sollol-route",
    "x-sollol-request-id",
    "x-sollol-queue-ms",
    "x-sollol-stale",
}
Answer = tuple[int, list[tuple[str, str]], bytes]

CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'
CASES: list[tuple[str, str, bytes | None]] = [
    # answered by the proxy itself
    ("GET", "/api/tags", None),
    ("HEAD", "/api/tags", None),
    ("GET", "/api/version", None),
    ("GET", "/api/ps", None),
    ("GET", "/v1/models", None),
    ("GET", "/", None),
    ("OPTIONS", "/api/tags", None),
    ("OPTIONS", "/v1/models", None),
    ("OPTIONS", "/", None),
    # answered by a node
    ("POST", "/api/chat", CHAT),
    ("POST", "/api/show", b'{"model":"llama3.2"}'),
    ("GET", "/v1/models/llama3.2:latest", None),
    ("POST", "/api/tags", b"{}"),  # 405
    ("GET", "/api/nope", None),  # 404
    ("OPTIONS", "/api/chat", None),
    ("OPTIONS", "/api/nope", None),
]


async def answer(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    async with http.request(
        method, url, data=body, headers=headers or {}, allow_redirects=False
    ) as response:
        pairs = sorted(
            ((k.lower(), v) for k, v in response.headers.items() if k.lower() not in VOLATILE),
            key=lambda pair: pair[0],  # stable: the values of one header keep their order
        )
        return response.status, pairs, await response.read()


@pytest.mark.parametrize("origin", [ALLOWED, FORBIDDEN], ids=["allowed", "forbidden"])
@pytest.mark.parametrize(("method", "path", "body"), CASES, ids=[f"{m} {p}" for m, p, _ in CASES])
async def test_same_cors_answer_direct_and_through_the_proxy(
    cluster: ClusterFactory,
    http: aiohttp.ClientSession,
    origin: str,
    method: str,
    path: str,
    body: bytes | None,
) -> None:
    direct_node = (await cluster(dict(name="direct", models=MODELS))).nodes[0]
    proxied = await cluster(dict(name="behind", models=MODELS))
    headers = {"Origin": origin}
    if method == "OPTIONS":
        headers["Access-Control-Request-Method"] = "POST"
    direct = await answer(http, method, direct_node.url + path, body, headers)
    through = await answer(http, method, proxied.url + path, body, headers)
    assert through == direct
    status, pairs, _ = direct
    if origin == FORBIDDEN:
        assert status == 403 and ("access-control-allow-origin", origin) not in pairs
    else:
        assert ("access-control-allow-origin", origin) in pairs


async def test_the_node_sees_the_clients_origin_on_forwarded_routes(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=MODELS))
    # The node allows an origin the proxy does not: on a route the node answers, the node decides.
    made.node("a").cors = CorsPolicy.from_origins(["https://ui.example"])
    headers = {"Origin": "https://ui.example"}
    status, pairs, _ = await answer(http, "POST", made.url + "/api/chat", CHAT, headers)
    assert status == 200 and ("access-control-allow-origin", "https://ui.example") in pairs
    assert made.node("a").requests[-1].headers["Origin"] == "https://ui.example"
    # ... and the proxy decides on what it answers itself.
    assert (await answer(http, "GET", made.url + "/api/tags", None, headers))[0] == 403


async def test_a_pages_own_origin_is_no_cors_request_behind_the_proxy_either(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # A page served from the proxy's address posts to it: its browser sends Origin. Ollama at
    # that address would see its own Host in it; the node behind sees another Host.
    direct_node = (await cluster(dict(name="direct", models=MODELS, bind_host="0.0.0.0"))).nodes[0]
    # The proxy listens on loopback, where Ollama's Host check (reference 1.5) applies: the
    # page's host is allowed, as it must be for any page served under a name.
    proxied = await cluster(
        dict(name="behind", models=MODELS), listen__allowed_hosts=["ui.example"]
    )
    headers = {"Host": "ui.example:11434", "Origin": "http://ui.example:11434"}
    direct = await answer(http, "POST", direct_node.url + "/api/chat", CHAT, headers)
    through = await answer(http, "POST", proxied.url + "/api/chat", CHAT, headers)
    assert through == direct and direct[0] == 200
    assert "Origin" not in proxied.node("behind").requests[-1].headers


async def test_errors_the_proxy_makes_follow_its_cors_verdict(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=MODELS))
    await made.node("a").stop()
    await made.fleet.refresh_all()
    status, pairs, body = await answer(
        http, "POST", made.url + "/api/chat", CHAT, {"Origin": ALLOWED}
    )
    assert status == 503 and orjson.loads(body)["error"].startswith("model 'llama3.2:latest'")
    assert ("access-control-allow-origin", ALLOWED) in pairs and ("vary", "Origin") in pairs
    assert await answer(http, "POST", made.url + "/api/chat", CHAT, {"Origin": FORBIDDEN}) == (
        403,
        [("content-length", "0")],
        b"",
    )


async def test_cors_origins_configures_the_proxys_verdict(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=MODELS), cors__origins="https://ui.example,*.corp")
    for origin, status in (("https://ui.example", 200), ("https://x.corp", 200), (FORBIDDEN, 403)):
        assert (await answer(http, "GET", made.url + "/api/tags", None, {"Origin": origin}))[
            0
        ] == status, origin
    star = await cluster(dict(name="b", models=MODELS), cors__origins=["*"])
    status, pairs, _ = await answer(
        http, "GET", star.url + "/sollol/health", None, {"Origin": FORBIDDEN}
    )
    assert status == 200 and ("access-control-allow-origin", "*") in pairs
    assert not [p for p in pairs if p[0] == "vary"]


def test_sollol_origins_is_read_like_ollama_origins() -> None:
    env = {"SOLLOL_NODES": "a", "SOLLOL_ORIGINS": "'https://a.example,chrome-extension://*'"}
    assert load_config(None, env=env).cors_origins == ("https://a.example", "chrome-extension://*")
    with pytest.raises(ConfigError) as error:
        load_config(None, env={"SOLLOL_NODES": "a", "SOLLOL_ORIGINS": "https://a, https://b"})
    assert str(error.value) == (
        "environment SOLLOL_ORIGINS: cors.origins[1]: must contain '*' or start with http://, "
        "https://, chrome-extension://, safari-extension://, moz-extension://, "
        "ms-browser-extension://, got ' https://b'"
    )


async def test_the_proxys_cors_answers_carry_nothing_of_its_own_and_are_not_counted(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=MODELS))

    async def requests_counted() -> int:
        async with http.get(made.url + "/sollol/stats") as response:
            return orjson.loads(await response.read())["requests"]

    await answer(http, "GET", made.url + "/api/tags")  # one request that is counted
    counted = await requests_counted()
    for method, origin in (("GET", FORBIDDEN), ("OPTIONS", ALLOWED)):
        async with http.request(
            method, made.url + "/api/tags", headers={"Origin": origin}
        ) as response:
            assert response.status in (403, 204)
            assert not [h for h in response.headers if h.lower().startswith("x-sollol-")]
    assert await requests_counted() == counted


@pytest.mark.parametrize("origin", [ALLOWED, FORBIDDEN, None], ids=["allowed", "forbidden", "none"])
@pytest.mark.parametrize("path", ["/api/chat", "/api/tags", "/api/nope"])
async def test_a_preflight_to_a_host_name_is_answered_by_cors_before_the_host_check(
    cluster: ClusterFactory, http: aiohttp.ClientSession, origin: str | None, path: str
) -> None:
    # Both listen on loopback, where the Host check applies; a browser page on localhost:3000
    # calls `localhost:11434`. Ollama's CORS answers the preflight before the Host check's own
    # bare 204 for OPTIONS, which is what an OPTIONS without Origin gets.
    direct_node = (await cluster(dict(name="direct", models=MODELS))).nodes[0]
    proxied = await cluster(dict(name="behind", models=MODELS))
    headers = {"Host": "localhost:11434", "Access-Control-Request-Method": "POST"}
    if origin is not None:
        headers["Origin"] = origin
        headers["Access-Control-Request-Headers"] = "content-type"
    direct = await answer(http, "OPTIONS", direct_node.url + path, None, headers)
    through = await answer(http, "OPTIONS", proxied.url + path, None, headers)
    assert through == direct
    names = {name for name, _ in direct[1]}
    if origin == ALLOWED:
        assert direct[0] == 204 and "access-control-allow-headers" in names
    else:
        assert direct[0] == (403 if origin else 204) and "access-control-allow-headers" not in names
