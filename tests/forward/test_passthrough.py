"""Byte-for-byte: the same request straight to a node and through the proxy gives the same answer."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from tests.conftest import ClusterFactory

# Headers that legitimately differ: the proxy's own, the clock, and framing (checked separately).
VOLATILE = {"date", "x-sollol-node", "x-sollol-route", "x-sollol-request-id", "x-sollol-queue-ms"}

DIGEST = "sha256:" + "0" * 64

# (method, path, body). Every route of reference section 2 that the simulated node implements,
# streaming and not, success and error, plus the framework-level answers (404, 405, redirects).
CASES: list[tuple[str, str, bytes | None]] = [
    ("GET", "/", None),
    ("HEAD", "/", None),
    ("GET", "/api/status", None),
    ("POST", "/api/generate", b'{"model":"llama3.2","prompt":"Why is the sky blue?"}'),
    ("POST", "/api/generate", b'{"model":"llama3.2","prompt":"Why <is> & sky","stream":false}'),
    ("POST", "/api/generate", b'{"model":"llama3.2","prompt":"hi","options":{"num_predict":3}}'),
    ("POST", "/api/generate", b'{"model":"llama3.2"}'),  # load
    ("POST", "/api/generate", b'{"model":"llama3.2","keep_alive":0}'),  # unload
    ("POST", "/api/generate", b'{"model":""}'),
    ("POST", "/api/generate", b'{"model":"nope","prompt":"x"}'),
    ("POST", "/api/chat", b'{"model":"llama3.2","messages":[{"role":"user","content":"hello"}]}'),
    (
        "POST",
        "/api/chat",
        b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}',
    ),
    ("POST", "/api/chat", b'{"model":"llama3.2","messages":[]}'),
    ("POST", "/api/chat", b'{"model":"","messages":[]}'),
    ("POST", "/api/chat", b'{"model":"nope","messages":[]}'),
    ("POST", "/api/chat", b'{"model":"llama3.2","stream":"yes"}'),
    (
        "POST",
        "/api/chat",
        b'{"model":"llama3.2","messages":[{"role":"user","content":"x"}],"options":{"num_ctx":"8k"}}',
    ),
    ("POST", "/api/chat", b"{not json"),
    ("POST", "/api/chat", b""),
    ("POST", "/api/embed", b'{"model":"all-minilm","input":["a","b"]}'),
    ("POST", "/api/embed", b'{"model":"all-minilm","input":""}'),
    # Over Go's 2048-byte buffer: a chunked, non-streamed body (framing kept as the node chose).
    (
        "POST",
        "/api/embed",
        b'{"model":"all-minilm","input":[' + b",".join([b'"text"'] * 40) + b"]}",
    ),
    ("POST", "/api/embed", b'{"model":"nope","input":"a"}'),
    ("POST", "/api/embeddings", b'{"model":"all-minilm","prompt":"a"}'),
    ("POST", "/api/show", b'{"model":"llama3.2"}'),
    ("POST", "/api/show", b'{"name":"llama3.2"}'),
    ("POST", "/api/show", b'{"model":"nope"}'),
    ("POST", "/api/show", b'{"model":""}'),
    (
        "POST",
        "/v1/chat/completions",
        b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}',
    ),
    (
        "POST",
        "/v1/chat/completions",
        b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}',
    ),
    (
        "POST",
        "/v1/chat/completions",
        b'{"model":"nope","messages":[{"role":"user","content":"hi"}]}',
    ),
    ("POST", "/v1/chat/completions", b'{"model":"llama3.2","messages":[]}'),
    ("POST", "/v1/completions", b'{"model":"llama3.2","prompt":"hi"}'),
    ("POST", "/v1/completions", b'{"model":"llama3.2","prompt":"hi","stream":true}'),
    ("POST", "/v1/embeddings", b'{"model":"all-minilm","input":"hi"}'),
    ("POST", "/v1/embeddings", b'{"model":"all-minilm","input":"hi","encoding_format":"base64"}'),
    ("GET", "/v1/models/llama3.2:latest", None),
    ("GET", "/v1/models/nope", None),
    ("HEAD", f"/api/blobs/{DIGEST}", None),
    ("HEAD", "/api/blobs/sha256:bad", None),
    ("GET", "/api/chat", None),  # 405 with Allow
    ("POST", "/api/tags", b"{}"),  # 405
    ("GET", "/api/nope", None),  # 404 text
    ("GET", "/api/tags/", None),  # trailing-slash redirect
    ("POST", "/api/generate/", b"{}"),  # 307
    ("GET", "/v1/responses", None),
    ("POST", "/api/push", b"{}"),  # model is required
]


def _headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower() not in VOLATILE}


async def _fetch(
    http: aiohttp.ClientSession, method: str, url: str, body: bytes | None
) -> tuple[int, dict[str, str], bytes]:
    async with http.request(method, url, data=body, allow_redirects=False) as response:
        return response.status, _headers(response), await response.read()


@pytest.mark.parametrize(
    ("method", "path", "body"), CASES, ids=[f"{m} {p} {(b or b'')[:40]!r}" for m, p, b in CASES]
)
async def test_same_bytes_direct_and_through_the_proxy(
    cluster: ClusterFactory, http: aiohttp.ClientSession, method: str, path: str, body: bytes | None
) -> None:
    # Two identical deterministic nodes: one is hit directly, the other only through the proxy.
    models = ["llama3.2:latest", "all-minilm:latest"]
    direct_node = (await cluster(dict(name="direct", models=models))).nodes[0]
    proxied = await cluster(dict(name="behind", models=models))
    direct = await _fetch(http, method, direct_node.url + path, body)
    through = await _fetch(http, method, proxied.url + path, body)
    assert through[0] == direct[0], through
    assert through[2] == direct[2]
    assert through[1] == direct[1]
    # And the proxied bytes are exactly what the node behind it wrote.
    sent = [r for r in proxied.nodes[0].responses if (r.method, r.path) == (method, path)]
    if method != "HEAD" and path != "/":  # the proxy answers "/" itself
        assert sent[-1].body == through[2]


async def test_streams_are_relayed_line_by_line_not_buffered(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"], token_delay=0.2))
    body = b'{"model":"llama3.2","prompt":"count slowly","options":{"num_predict":10}}'
    async with http.post(made.url + "/api/generate", data=body) as response:
        assert response.headers["Content-Type"] == "application/x-ndjson"
        assert response.headers["Transfer-Encoding"] == "chunked"
        first = await asyncio.wait_for(response.content.readline(), 1.5)
        # The node is still generating: the proxy passed the first token on at once.
        assert made.nodes[0].in_flight() == 1
        assert orjson.loads(first)["done"] is False
        rest = await response.read()
    lines = (first + rest).split(b"\n")
    assert lines[-1] == b"" and all(lines[:-1]), "no blank lines, every line one object"
    assert [orjson.loads(line)["done"] for line in lines[:-1]] == [False] * 10 + [True]


async def test_headers_across_the_proxy(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # The proxy listens on loopback, so it checks Host as Ollama does: this name is allowed.
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]), listen__allowed_hosts=["ollama.example.com"]
    )
    headers = {
        "Host": "ollama.example.com",  # the loopback node would answer 403 to this Host
        "User-Agent": "GitHubCopilotChat/1.0",
        "X-Sollol-Node": "a",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "hop-only",
        "X-Custom": "kept",
    }
    async with http.post(
        made.url + "/api/show", data=b'{"model":"llama3.2"}', headers=headers
    ) as response:
        assert response.status == 200
        assert "Server" not in response.headers and "Content-Encoding" not in response.headers
        assert response.headers["X-Sollol-Node"] == "a"
        assert response.headers["X-Sollol-Route"] == "pinned by X-Sollol-Node"
        assert len(response.headers["X-Sollol-Request-Id"]) == 16
    seen = made.nodes[0].requests[-1].headers
    assert seen["Host"] == made.nodes[0].url.removeprefix("http://")
    assert seen["User-Agent"] == "GitHubCopilotChat/1.0" and seen["X-Custom"] == "kept"
    assert "X-Sollol-Node" not in seen and "X-Hop" not in seen
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    direct = await http.post(
        made.nodes[0].url + "/api/show",
        data=b'{"model":"llama3.2"}',
        headers={"Host": "ollama.example.com"},
    )
    assert direct.status == 403  # proof that the rewrite above mattered


async def test_every_response_names_node_route_and_request_id(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]), dict(name="b", models=["qwen2.5:7b"])
    )
    async with http.post(
        made.url + "/api/chat", data=b'{"model":"qwen2.5:7b","messages":[]}'
    ) as response:
        assert response.headers["X-Sollol-Node"] == "b"
        assert response.headers["X-Sollol-Route"].startswith("performance: cold load ")
    ids = set()
    for path in ("/api/tags", "/api/version", "/", "/api/nope"):
        async with http.get(made.url + path) as response:
            ids.add(response.headers["X-Sollol-Request-Id"])
    assert len(ids) == 4


async def test_large_blob_upload_is_streamed_through(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    import hashlib

    made = await cluster(dict(name="a", models=[]))
    payload = b"x" * (8 * 2**20)
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()

    async def chunks():  # the client streams it too: neither side holds a buffered copy
        for i in range(0, len(payload), 2**20):
            yield payload[i : i + 2**20]

    async with http.post(f"{made.url}/api/blobs/{digest}", data=chunks()) as response:
        assert response.status == 201 and await response.read() == b""
    async with http.head(f"{made.url}/api/blobs/{digest}") as response:
        assert response.status == 200


async def test_body_over_the_limit_is_refused_in_ollama_form(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]), limits__max_body_bytes=4096)
    async with http.post(
        made.url + "/api/chat", data=b'{"model":"llama3.2","messages":[' + b" " * 5000 + b"]}"
    ) as response:
        assert response.status == 413
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert orjson.loads(await response.read()) == {
            "error": "request body is larger than the proxy's limit of 4096 bytes"
        }
    assert made.nodes[0].requests == [] or all(
        r.path != "/api/chat" for r in made.nodes[0].requests
    )


async def test_compressed_request_bodies_pass_through_untouched(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    import gzip

    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    raw = b'{"model":"llama3.2","messages":[],"stream":false}'
    packed = gzip.compress(raw)
    headers = {"Content-Encoding": "gzip"}
    async with http.post(made.url + "/api/chat", data=packed, headers=headers) as response:
        # The proxy read the model for routing, but the node got the client's own bytes.
        assert response.headers["X-Sollol-Route"].startswith("performance: ")
        proxied = (response.status, await response.read())
    # The chat, not a health probe that may have reached the node after it.
    seen = [r for r in made.node("a").requests if r.path == "/api/chat"][-1]
    assert seen.body == packed and seen.headers["Content-Encoding"] == "gzip"
    async with http.post(made.node("a").url + "/api/chat", data=packed, headers=headers) as direct:
        assert (direct.status, await direct.read()) == proxied
    assert proxied[0] == 400  # Ollama does not decode request bodies: invalid JSON to it


async def test_no_headers_are_added_on_the_way_to_the_node(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    async with http.post(
        made.url + "/api/show",
        data=b'{"model":"llama3.2"}',
        skip_auto_headers=["Accept", "Accept-Encoding", "User-Agent", "Content-Type"],
    ) as response:
        assert response.status == 200
    seen = made.node("a").requests[-1].headers
    assert {k.lower() for k in seen} == {"host", "content-length", "x-forwarded-for"}


async def test_unclean_paths_get_ollamas_own_redirect(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    import yarl

    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    url = yarl.URL(made.url + "/api/../api/tags", encoded=True)
    async with http.get(url, allow_redirects=False) as response:
        direct_url = yarl.URL(made.node("a").url + "/api/../api/tags", encoded=True)
        async with http.get(direct_url, allow_redirects=False) as direct:
            assert (response.status, response.headers.get("Location")) == (
                direct.status,
                direct.headers.get("Location"),
            )
            assert response.status == 301
