"""Issue #14's hostile inputs, replayed over real sockets against the real proxy.

Each case asserts a clear answer (a 4xx in Ollama's shape, or the right node's answer), no
traceback in the body or the log, nodes still up, and a normal request still served. The large
bodies are in test_hostile_bodies.py (a proxy process of its own, to measure its memory and its
event loop); management from another machine is in tests/guard/test_guard.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import orjson
import pytest
import yarl

from sollol_proxy.app import PROXY
from tests.conftest import Cluster, ClusterFactory, eventually

MODEL = "llama3.2:latest"
CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'


async def fleet(cluster: ClusterFactory, **settings: object) -> Cluster:
    """Node a has the model, node b does not: a misrouted request shows."""
    return await cluster(
        dict(name="a", models=[MODEL, "all-minilm:latest"]),
        dict(name="b", models=["qwen2.5:7b"]),
        **settings,
    )


def no_traceback(caplog: pytest.LogCaptureFixture, *bodies: bytes) -> None:
    # The proxy's loggers and aiohttp's server (a handler's unhandled error); not asyncio's,
    # where an earlier test's client garbage-collected now may complain.
    for record in caplog.records:
        if not record.name.startswith(("sollol", "aiohttp")):
            continue
        assert record.exc_info is None, record.getMessage()
        assert "Traceback" not in record.getMessage()
    for body in bodies:
        assert b"Traceback" not in body and b'File "' not in body


async def still_serving(made: Cluster, http: aiohttp.ClientSession) -> None:
    # A probe may miss its 1 s timeout on a loaded machine. A node that dropped out once takes a
    # trial as soon as a probe answers again (fleet/health.py), so every node must take work
    # again at once; node b, which gets no request here, stays half-open until one comes.
    await eventually(lambda: all(n.health.admits() for n in made.fleet.nodes.values()))
    async with http.post(made.url + "/api/chat", data=CHAT) as response:
        assert response.status == 200 and response.headers["X-Sollol-Node"] == "a"


async def raw(url: str, data: bytes, source: str | None = None) -> bytes:
    """One request written as bytes; the answer read to the end of the connection."""
    host, port = url.removeprefix("http://").split(":")
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=local)
    writer.write(data)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@asynccontextmanager
async def loop_lag() -> AsyncIterator[list[float]]:
    """The event loop's worst lateness while the block runs (seconds), in a one-item list."""
    worst = [0.0]

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            worst[0] = max(worst[0], loop.time() - before - 0.005)

    task = asyncio.create_task(probe())
    try:
        yield worst
    finally:
        task.cancel()


async def test_a_repeated_node_name_is_one_node_not_thousands_of_requests(
    cluster: ClusterFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    made = await fleet(cluster)
    pinned = ",".join(["a"] * 32000)  # a 64 KB header: 32,000 upstream DELETEs before
    async with http.delete(
        made.url + "/api/delete", data=b'{"model":"all-minilm"}', headers={"X-Sollol-Node": pinned}
    ) as response:
        assert response.status == 200 and response.headers["X-Sollol-Node"] == "a"
    assert sum(r.path == "/api/delete" for r in made.node("a").requests) == 1
    too_many = {"X-Sollol-Node": "a,b,c"}
    async with http.post(made.url + "/api/chat", data=CHAT, headers=too_many) as response:
        assert response.status == 400
        assert (await response.json())["error"].startswith("X-Sollol-Node names unknown node 'c'")
    await still_serving(made, http)
    no_traceback(caplog)


@pytest.mark.parametrize("value", ["²", "٣", "10 ", "1e1", "-1", "high!", "x" * 5000])
async def test_priorities_other_than_ascii_digits_and_names_get_400(
    cluster: ClusterFactory,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    made = await fleet(cluster)
    headers = {"X-Sollol-Priority": value}
    async with http.post(made.url + "/api/chat", data=CHAT, headers=headers) as response:
        body = await response.read()
        if value == "10 ":  # surrounding spaces are not part of a header value
            assert response.status == 200
            return
        assert response.status == 400, body
        error = orjson.loads(body)["error"]
        assert error.startswith("invalid priority '") and len(error) < 200
    no_traceback(caplog, body)
    await still_serving(made, http)


@pytest.mark.parametrize(
    "line",
    [
        b"GET http://evil.example/api/tags HTTP/1.1",
        b"POST http://127.0.0.1/api/chat HTTP/1.1",
        b"CONNECT evil.example:443 HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
    ],
)
async def test_absolute_form_and_connect_request_lines_get_400(
    cluster: ClusterFactory,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    line: bytes,
) -> None:
    made = await fleet(cluster)
    answer = await raw(made.url, line + b"\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
    status, body = status_and_body(answer)
    assert status == 400
    assert orjson.loads(body) == {
        "error": "bad request: the request target must be a path (sollol-proxy is not a forward"
        " proxy)"
    }
    assert b"Connection: close" in answer
    assert re.search(rb"\r\nX-Sollol-Request-Id: [0-9a-f]{16}\r\n", answer)
    no_traceback(caplog, body)
    await still_serving(made, http)


async def test_deep_json_is_read_as_deep_as_go_reads_it(
    cluster: ClusterFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    made = await fleet(cluster)
    deep = 2000  # Go accepts up to 10000 levels; Python's parser stopped at 1000 with a 500
    body = b'{"model":"llama3.2","x":' + b"[" * deep + b"]" * deep + b',"stream":false}'
    async with http.post(made.url + "/api/chat", data=body) as response:
        answer = await response.read()
        assert response.status == 200, answer
        assert response.headers["X-Sollol-Node"] == "a"  # routed by its model
        assert response.headers["X-Sollol-Route"].startswith("performance: ")
    too_deep = b'{"model":"llama3.2","x":' + b"[" * 10000 + b"]" * 10000 + b"}"
    async with http.post(made.url + "/api/chat", data=too_deep) as response:
        error = await response.read()
        assert response.status == 400  # Ollama's own answer: the body went to a node as it was
        assert orjson.loads(error) == {"error": "invalid character '[' exceeded max depth"}
    no_traceback(caplog, answer, error)
    await still_serving(made, http)


async def test_invalid_utf8_still_names_the_model_and_queues(
    cluster: ClusterFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    made = await fleet(cluster)
    body = b'{"model":"llama3.2","messages":[{"role":"user","content":"\xff\xfe caf\xe9"}],'
    body += b'"stream":false}'
    for _ in range(3):  # round robin or not, never to node b, which lacks the model
        async with http.post(made.url + "/api/chat", data=body) as response:
            answer = await response.read()
            assert response.status == 200, answer
            assert response.headers["X-Sollol-Node"] == "a"
            assert "X-Sollol-Queue-Ms" in response.headers  # through the priority queue
    no_traceback(caplog, answer)
    await still_serving(made, http)


async def test_model_names_cannot_forge_or_flood_log_lines(
    cluster: ClusterFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    made = await fleet(cluster)
    forged = "x\nrequest_id=0 client=10.0.0.1 method=DELETE route=/api/delete status=200"
    huge = "m" * (5 * 2**20)
    for model in (forged, huge):
        body = orjson.dumps({"model": model, "messages": [], "stream": False})
        async with http.post(made.url + "/api/chat", data=body) as response:
            assert 400 <= response.status < 500  # the node's own "not found"
            await response.read()
    access = [r.getMessage() for r in caplog.records if r.name == "sollol.access"]
    assert len(access) == 2
    assert all("\n" not in line and len(line) < 2000 for line in access)
    assert 'model="x\\x0arequest_id=0 client=10.0.0.1' in access[0]
    assert all(len(r.getMessage()) < 2000 for r in caplog.records)
    no_traceback(caplog)
    await still_serving(made, http)


async def test_a_foreign_host_gets_403_like_a_loopback_ollama(
    cluster: ClusterFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    made = await fleet(cluster)  # the test proxy listens on 127.0.0.1, like Ollama by default
    for path in ("/api/tags", "/api/version", "/sollol/nodes", "/api/chat"):
        async with http.get(made.url + path, headers={"Host": "evil.example"}) as response:
            assert response.status == 403 and await response.read() == b""
    async with http.get(made.url + "/api/tags", headers={"Host": "localhost:11434"}) as response:
        assert response.status == 200
    allowed = await fleet(cluster, listen__allowed_hosts=["ollama.example.com"])
    async with http.get(
        allowed.url + "/api/tags", headers={"Host": "ollama.example.com"}
    ) as response:
        assert response.status == 200
    async with http.options(
        allowed.url + "/api/chat", headers={"Host": "ollama.example.com"}
    ) as response:
        assert response.status == 204  # Ollama answers OPTIONS to an allowed name itself
    no_traceback(caplog)
    await still_serving(made, http)


async def proxy_and_node(
    http: aiohttp.ClientSession, made: Cluster, method: str, path: str, host: str, header: str
) -> list[tuple[int, str | None, bytes]]:
    """The same request to the proxy and to its one node directly, with `path` sent as it is
    (unclean paths included) and redirects not followed: status, `header` and body of each."""
    answers = []
    for url in (made.url, made.nodes[0].url):
        target = yarl.URL(url + path, encoded=True)
        async with http.request(method, target, headers={"Host": host}, allow_redirects=False) as r:
            answers.append((r.status, r.headers.get(header), await r.read()))
    return answers


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
async def test_a_foreign_hosts_403_carries_gins_allow_like_the_node_behind(
    cluster: ClusterFactory, http: aiohttp.ClientSession, engine: str
) -> None:
    # gin sets a 405's Allow before its middleware runs, so the Host check's 403 keeps it
    # (reference 1.1, 1.7): the proxy's 403 is the loopback node's, header for header.
    made = await cluster(dict(name="a", models=[MODEL]), listen__engine=engine)
    cases = [
        ("GET", "/api/chat"),
        ("PUT", "/api/tags"),
        ("POST", "/"),
        ("DELETE", "/api/ps"),
        ("GET", "/api/blobs/sha256:" + "0" * 64),
        ("GET", "/v1/models/llama3.2"),
        ("POST", "/api/status"),
        ("POST", "/api/chat"),
        ("GET", "/api/nope"),
    ]
    for method, path in cases:
        answers = await proxy_and_node(http, made, method, path, "evil.example", "Allow")
        assert answers[0] == answers[1], (method, path, answers)
        assert answers[0][0] == 403
    # An allowed name's OPTIONS is answered 204 by the same check, after gin set the Allow.
    for path, allow in (("/api/chat", "POST"), ("/api/tags", "HEAD, GET"), ("/nope", None)):
        answers = await proxy_and_node(http, made, "OPTIONS", path, "localhost", "Allow")
        assert answers[0] == answers[1] == (204, allow, b""), (path, answers)


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
async def test_a_foreign_host_gets_the_redirect_ollama_sends_before_its_host_check(
    cluster: ClusterFactory, http: aiohttp.ClientSession, engine: str
) -> None:
    # net/http's ServeMux redirects an unclean path, and gin a trailing slash, before gin's
    # middleware (CORS, the Host check) runs (reference 1.7): the redirect, not a 403.
    made = await cluster(dict(name="a", models=[MODEL]), listen__engine=engine)
    cases = [
        ("GET", "/api/tags/", 301),
        ("POST", "/api/chat/", 307),
        ("GET", "/api/../api/tags", 301),
        ("POST", "/api/./chat", 301),
        ("GET", "/api/tags//", 301),
    ]
    for method, path, status in cases:
        answers = await proxy_and_node(http, made, method, path, "evil.example", "Location")
        assert answers[0] == answers[1], (method, path, answers)
        assert answers[0][0] == status, (method, path, answers)
    # Followed, the clean path meets the Host check.
    async with http.get(
        made.url + "/api/tags/", headers={"Host": "evil.example"}, allow_redirects=False
    ) as r:
        location = r.headers["Location"]
    async with http.get(made.url + location, headers={"Host": "evil.example"}) as r:
        assert r.status == 403


async def test_a_slow_body_is_cut_with_408(
    cluster: ClusterFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    made = await fleet(cluster, limits__body_timeout=0.5)
    started = time.monotonic()
    answer = await raw(
        made.url,
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{",
    )
    status, body = status_and_body(answer)
    assert status == 408 and time.monotonic() - started < 5
    assert orjson.loads(body)["error"].startswith("request body too slow: 1 bytes in ")
    # A blob upload is streamed to a node as it arrives: the same bound, and the node that
    # was receiving it is not blamed for the client's silence.
    answer = await raw(
        made.url,
        b"POST /api/blobs/sha256:" + b"0" * 64 + b" HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Length: 1000\r\n\r\nx",
    )
    status, blob = status_and_body(answer)
    assert status == 408 and orjson.loads(blob)["error"].startswith("request body too slow")
    # A batch job's documents are read under the same bound.
    answer = await raw(
        made.url,
        b"POST /api/embed/batch HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{",
    )
    status, batch = status_and_body(answer)
    assert status == 408 and orjson.loads(batch)["error"].startswith("request body too slow")
    no_traceback(caplog, body, blob, batch)
    await still_serving(made, http)


def _enough_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        assert hard >= needed, f"the test needs {needed} open files; the hard limit is {hard}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _silent_sockets(url: str, count: int, sources: list[str]) -> list[asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    gate = asyncio.Semaphore(200)

    async def one(i: int) -> asyncio.StreamWriter:
        async with gate:
            source = sources[i % len(sources)]
            _, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
            return writer

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def _served_within(url: str, seconds: float, source: str | None = None) -> float:
    """How long until GET /api/version is answered 200 (503s retried)."""
    started = time.monotonic()
    connector = aiohttp.TCPConnector(local_addr=(source, 0) if source else None)
    async with aiohttp.ClientSession(connector=connector) as session:
        while True:
            try:
                async with session.get(url + "/api/version") as response:
                    if response.status == 200:
                        return time.monotonic() - started
                    assert response.status == 503
            except aiohttp.ClientConnectionError:
                pass  # closed unanswered: refused beyond the refusals the proxy answers
            assert time.monotonic() - started < seconds, "not served in time"
            await asyncio.sleep(0.05)


@asynccontextmanager
async def highest(read: Callable[[], int]) -> AsyncIterator[list[int]]:
    """The highest value `read()` took while the block ran, in a one-item list."""
    most = [read()]

    async def watch() -> None:
        while True:
            most[0] = max(most[0], read())
            await asyncio.sleep(0.002)

    task = asyncio.create_task(watch())
    try:
        yield most
    finally:
        task.cancel()


async def test_slowloris_2000_silent_sockets_do_not_lock_clients_out(
    cluster: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _enough_files(8192)
    header_timeout = 2.0
    made = await fleet(cluster, limits__header_timeout=header_timeout)
    book = made.proxy.runner.app[PROXY].limits.book
    async with loop_lag() as lag:
        # One address: it gets its 256 connections and no more; everyone else is served at once.
        async with highest(lambda: book.by_client.get("127.0.0.2", 0)) as most:
            attackers = await _silent_sockets(made.url, 2000, ["127.0.0.2"])
        assert most[0] == 256
        assert await _served_within(made.url, 1.0) < 1.0
        # The attacker's own address too, once its silent sockets have timed out.
        assert await _served_within(made.url, header_timeout + 2.0, "127.0.0.2") > 0
        await asyncio.sleep(header_timeout + 0.5)
        assert book.by_client.get("127.0.0.2", 0) <= 1
        for writer in attackers:
            writer.close()
        # Spread over eight addresses they fill max_connections, but only for a header timeout.
        spread = [f"127.0.0.{i}" for i in range(2, 10)]
        async with highest(lambda: book.accepted) as most:
            attackers = await _silent_sockets(made.url, 2000, spread)
        assert most[0] == 1000
        assert await _served_within(made.url, header_timeout + 2.0) < header_timeout + 2.0
        for writer in attackers:
            writer.close()
    # The attacker's 2,000 sockets are opened from this same event loop, so the lag includes
    # their cost on a shared machine; a blocked loop (the proxy waiting on one client) is seconds.
    assert lag[0] < 2.0
    no_traceback(caplog)
    async with aiohttp.ClientSession() as http:
        await still_serving(made, http)
