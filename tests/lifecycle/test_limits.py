"""Limits against abuse: each one answers with a status and an Ollama-shaped body."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import resource
import socket

import aiohttp
import orjson
import pytest

from sollol_proxy.app import PROXY
from sollol_proxy.lifecycle.sockets import keepalive_socket_factory
from sollol_proxy.server import raise_open_files_limit
from tests.conftest import ClusterFactory, eventually

JSON_CHARSET = "application/json; charset=utf-8"


async def _raw(url: str, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    if request:
        writer.write(request)
        await writer.drain()
    return reader, writer


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer read off a raw socket, up to the end of the connection."""
    data = await asyncio.wait_for(reader.read(), 10)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def test_body_limit_on_v1_uses_the_openai_envelope_and_blob_uploads_are_exempt(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]), limits__max_body_bytes=4096)
    body = b'{"model":"llama3.2","messages":[' + b" " * 5000 + b"]}"
    async with http.post(made.url + "/v1/chat/completions", data=body) as response:
        assert response.status == 413
        assert orjson.loads(await response.read())["error"]["message"] == (
            "request body is larger than the proxy's limit of 4096 bytes"
        )
    payload = b"y" * 20000  # five times the limit: uploads are streamed, never held
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    async with http.post(f"{made.url}/api/blobs/{digest}", data=payload) as response:
        assert response.status == 201
    assert made.nodes[0].blobs[digest] == len(payload)


async def test_a_header_line_over_the_limit_gets_431_in_ollama_form(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[]), limits__max_header_bytes=4096)
    # One line over the limit: aiohttp's parser refuses it, the proxy's protocol answers.
    async with http.get(made.url + "/api/version", headers={"X-Big": "a" * 5000}) as response:
        assert response.status == 431
        assert response.headers["Content-Type"] == JSON_CHARSET
        assert orjson.loads(await response.read()) == {
            "error": "request header too large (limit 4096 bytes)"
        }
    # Lines under the limit that add up to more than it: the same answer.
    many = {f"X-Part-{i}": "b" * 1000 for i in range(5)}
    async with http.get(made.url + "/v1/models", headers=many) as response:
        assert response.status == 431
        assert orjson.loads(await response.read())["error"]["message"] == (
            "request header too large (limit 4096 bytes)"
        )
    # Under the limit: answered as usual.
    async with http.get(made.url + "/api/version", headers={"X-Small": "c" * 3000}) as response:
        assert response.status == 200


async def test_too_many_headers_and_garbage_get_ollama_shaped_errors(
    cluster: ClusterFactory,
) -> None:
    made = await cluster(dict(name="a", models=[]))
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    reader, writer = await _raw(
        made.url, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n" + fields + b"\r\n"
    )
    status, headers, body = await _answer(reader)
    writer.close()
    assert status == 431 and headers["content-type"] == JSON_CHARSET
    assert orjson.loads(body) == {"error": "too many request header fields (limit 128)"}
    reader, writer = await _raw(made.url, b"NOT HTTP AT ALL\r\n\r\n")
    status, headers, body = await _answer(reader)
    writer.close()
    assert status == 400 and headers["content-type"] == JSON_CHARSET
    assert orjson.loads(body)["error"].startswith("bad request: ")


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
async def test_requests_the_parser_refuses_get_no_server_header(
    cluster: ClusterFactory, engine: str
) -> None:
    # Ollama sends no Server header (reference 1.1); nor may the answers to requests aiohttp's
    # parser refuses, which never reach the app's response hooks that drop it elsewhere.
    made = await cluster(dict(name="a", models=[]), listen__engine=engine)
    smuggle = b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    for request in (
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\n" + smuggle,
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"GET /api/version HTTP/1.1\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ):
        reader, writer = await _raw(made.url, request)
        status, headers, body = await _answer(reader)
        writer.close()
        assert status == 400 and orjson.loads(body)["error"].startswith("bad request: ")
        assert "server" not in headers, (request, headers)


async def test_connections_beyond_the_limit_get_503_and_are_closed(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[]), limits__max_connections=2)
    server = made.proxy.runner.server
    held = [await _raw(made.url, b"") for _ in range(2)]  # idle connections count too
    await eventually(lambda: len(server.connections) == 2)
    # The request announces a body it never sends: the proxy answers without waiting for it.
    reader, writer = await _raw(
        made.url,
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n",
    )
    status, headers, body = await _answer(reader)  # up to the close of the connection
    writer.close()
    assert status == 503 and headers["content-type"] == JSON_CHARSET
    assert headers["connection"] == "close"
    assert orjson.loads(body) == {
        "error": "sollol-proxy has too many open connections (limit 2); try again later"
    }
    assert all(r.path != "/api/chat" for r in made.nodes[0].requests)
    # The held connections are served; once one closes, a new connection is served too.
    reader, writer = held[0]
    writer.write(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert (await _answer(reader))[0] == 200
    writer.close()
    await eventually(lambda: len(server.connections) == 1)
    async with http.get(made.url + "/api/version") as response:
        assert response.status == 200
    held[1][1].close()


async def test_a_connection_beyond_the_limit_that_sends_nothing_is_closed(
    cluster: ClusterFactory,
) -> None:
    made = await cluster(dict(name="a", models=[]), limits__max_connections=1)
    _, held = await _raw(made.url, b"")
    reader, writer = await _raw(made.url, b"")
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the proxy, unanswered
    writer.close()
    held.close()


async def test_one_client_address_gets_at_most_its_share_of_connections(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[]), limits__max_connections_per_client=1)
    _, held = await _raw(made.url, b"")
    reader, writer = await _raw(made.url, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, headers, body = await _answer(reader)
    writer.close()
    assert status == 503 and headers["connection"] == "close"
    assert orjson.loads(body) == {
        "error": "sollol-proxy has too many open connections from this client"
        " (limit 1 per client); try again later"
    }
    held.close()
    await eventually(lambda: not made.proxy.runner.app[PROXY].limits.book.by_client)
    async with http.get(made.url + "/api/version") as response:
        assert response.status == 200


async def test_headers_that_trickle_in_are_cut_at_the_header_timeout(
    cluster: ClusterFactory,
) -> None:
    made = await cluster(dict(name="a", models=[]), limits__header_timeout=0.5)
    reader, writer = await _raw(made.url, b"GET /api/version HTTP/1.1\r\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with contextlib.suppress(ConnectionError):
        for _ in range(30):  # a byte every 0.1 s: never idle, never done
            writer.write(b"X")
            await writer.drain()
            await asyncio.sleep(0.1)
            if reader.at_eof():
                break
    assert loop.time() - started < 1.5  # closed by the proxy at its header timeout
    answer = b""
    with contextlib.suppress(ConnectionError):
        answer = await asyncio.wait_for(reader.read(), 5)
    assert answer == b""  # unanswered
    writer.close()


async def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout(
    cluster: ClusterFactory,
) -> None:
    made = await cluster(dict(name="a", models=[]), limits__idle_timeout=0.5)
    reader, writer = await _raw(made.url, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 0.3 < loop.time() - started < 3
    writer.close()


async def test_client_and_node_sockets_get_tcp_keepalive(cluster: ClusterFactory) -> None:
    made = await cluster(dict(name="a", models=[]), limits__tcp_keepalive=7)
    _, writer = await _raw(made.url, b"")
    server = made.proxy.runner.server
    await eventually(lambda: len(server.connections) == 1)
    sock = server.connections[0].transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
    writer.close()
    upstream = keepalive_socket_factory(7)(
        (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 1))
    )
    with upstream:
        assert upstream.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert upstream.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
async def test_a_client_that_stops_reading_is_cut_and_frees_the_node(
    cluster: ClusterFactory, caplog: pytest.LogCaptureFixture, engine: str
) -> None:
    caplog.set_level(logging.INFO, logger="sollol.access")
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]),
        listen__engine=engine,
        limits__write_timeout=0.5,
    )
    host, port = made.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few lines
    sock.connect((host, int(port)))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    body = b'{"model":"llama3.2","prompt":"x","options":{"num_predict":1000000}}'
    writer.write(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    assert (await reader.readexactly(12)).startswith(b"HTTP/1.1 200")
    node = made.nodes[0]
    await eventually(lambda: node.in_flight() == 1)
    # Nothing more is read: the proxy's writes block, and it gives up after 0.5 s of that.
    await eventually(lambda: node.in_flight() == 0, within=10)
    access = [r for r in caplog.records if r.name == "sollol.access"]
    assert access and access[-1].fields["outcome"] == "client_stalled"  # type: ignore[attr-defined]
    writer.close()


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        raise_open_files_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
@pytest.mark.parametrize("expect", [b"Expect: 100-continue\r\n", b""])
async def test_a_body_declared_over_the_limit_is_refused_before_it_is_sent_and_not_read(
    cluster: ClusterFactory, engine: str, expect: bytes
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]),
        listen__engine=engine,
        limits__max_body_bytes=4096,
    )
    reader, writer = await _raw(
        made.url,
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n"
        + expect
        + b"\r\n",
    )
    # No invitation to send it (100 Continue), and the connection ends with the 413: the
    # body is not read.
    status, headers, body = await _answer(reader)
    assert status == 413 and headers["connection"] == "close"
    assert orjson.loads(body) == {
        "error": "request body is larger than the proxy's limit of 4096 bytes"
    }
    writer.close()
    if not expect:
        return
    # A blob upload has no body limit: it is invited as before.
    digest = "sha256:" + "0" * 64
    reader, writer = await _raw(
        made.url,
        f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n"
        "Expect: 100-continue\r\n\r\n".encode(),
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.close()
