"""The data plane (listen.engine: fast): which requests it serves, what it hands to aiohttp, and
the connection-level behaviour it owns (pipelining, heads and bodies in pieces, timers)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from sollol_proxy.app import POOL
from sollol_proxy.config.loader import load_config
from sollol_proxy.config.model import ConfigError
from sollol_proxy.dataplane.protocol import FastProtocol
from sollol_proxy.guard.keys import new_key
from sollol_proxy.lifecycle.limits import ProxyProtocol
from tests.conftest import ClusterFactory, eventually

MODEL = "llama3.2:latest"
CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'


def _post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer with a Content-Length body, read off a keep-alive connection (after the
    interim 100 Continue, if any)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    if head.startswith(b"HTTP/1.1 100 "):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")[:-2]
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, body


def _protocols(made: object) -> list[type]:
    return [type(c) for c in made.proxy.runner.server.connections]  # type: ignore[attr-defined]


async def test_a_chat_and_a_fleet_view_are_served_by_the_data_plane_and_another_route_hands_over(
    cluster: ClusterFactory,
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]))
    reader, writer = await _open(made.url)
    writer.write(_post("/api/chat", CHAT))
    status, headers, body = await _read_answer(reader)
    assert status == 200 and headers["x-sollol-node"] == "a"
    assert orjson.loads(body)["done"] is True
    assert _protocols(made) == [FastProtocol]
    # A fleet view, as clients poll it between chats: served here too.
    writer.write(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, _, body = await _read_answer(reader)
    assert status == 200 and orjson.loads(body)["models"][0]["name"] == MODEL
    assert _protocols(made) == [FastProtocol]
    # A route the data plane does not serve: the connection goes to aiohttp, with its bytes,
    # and stays there (the chat after it is answered there too).
    writer.write(
        b"GET /sollol/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + _post("/api/chat", CHAT)
    )
    status, _, body = await _read_answer(reader)
    assert status == 200 and orjson.loads(body)["nodes"][0]["name"] == "a"
    status, _, body = await _read_answer(reader)
    assert status == 200 and orjson.loads(body)["done"] is True
    assert _protocols(made) == [ProxyProtocol]
    writer.close()


async def test_pipelined_requests_and_heads_and_bodies_in_pieces_are_answered_in_order(
    cluster: ClusterFactory,
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]))
    reader, writer = await _open(made.url)
    embed = b'{"model":"llama3.2","input":"x"}'
    stream = _post("/api/chat", CHAT) + _post("/api/embed", embed) + _post("/api/chat", CHAT)
    for start in range(0, len(stream), 7):  # seven bytes at a time: heads and bodies split
        writer.write(stream[start : start + 7])
        await writer.drain()
    answers = [await _read_answer(reader) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert "message" in orjson.loads(answers[0][2])
    assert "embeddings" in orjson.loads(answers[1][2])
    assert "message" in orjson.loads(answers[2][2])
    ids = {headers["x-sollol-request-id"] for _, headers, _ in answers}
    assert len(ids) == 3
    assert _protocols(made) == [FastProtocol]
    writer.close()


@pytest.mark.parametrize("extra", [b"Expect: 100-continue\r\n", b"Connection: close\r\n"])
async def test_requests_the_data_plane_does_not_serve_are_answered_by_aiohttp(
    cluster: ClusterFactory, extra: bytes
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]))
    reader, writer = await _open(made.url)
    writer.write(_post("/api/chat", CHAT, extra))
    status, _, body = await _read_answer(reader)
    assert status == 200 and orjson.loads(body)["done"] is True
    if extra.startswith(b"Expect"):
        assert _protocols(made) == [ProxyProtocol]
    else:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after its answer
    writer.close()


async def test_the_app_middlewares_run_on_the_data_plane(cluster: ClusterFactory) -> None:
    """CORS, the Host check and API keys answer on the data plane as on aiohttp's path."""
    key, sha256 = new_key()
    made = await cluster(
        dict(name="a", models=[MODEL]), auth__keys=[{"name": "app", "sha256": sha256}]
    )
    reader, writer = await _open(made.url)
    writer.write(_post("/api/chat", CHAT))
    status, headers, body = await _read_answer(reader)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="sollol-proxy"'
    assert "API key is required" in orjson.loads(body)["error"]
    writer.write(_post("/api/chat", CHAT, b"Origin: http://example.com\r\n"))
    status, _, body = await _read_answer(reader)
    assert (status, body) == (403, b"")  # Ollama's answer to a foreign Origin
    writer.write(_post("/api/chat", CHAT).replace(b"Host: 127.0.0.1", b"Host: evil.example"))
    status, _, body = await _read_answer(reader)
    assert (status, body) == (403, b"")  # the Host check (the proxy listens on loopback)
    writer.write(_post("/api/chat", CHAT, f"Authorization: Bearer {key}\r\n".encode()))
    status, _, body = await _read_answer(reader)
    assert status == 200 and orjson.loads(body)["done"] is True
    assert made.node("a").requests[-1].headers.get("Authorization") is None  # not forwarded
    assert _protocols(made) == [FastProtocol]
    writer.close()


async def test_a_refusal_before_the_body_reads_the_rest_and_keeps_the_connection(
    cluster: ClusterFactory,
) -> None:
    _, sha256 = new_key()
    made = await cluster(
        dict(name="a", models=[MODEL]), auth__keys=[{"name": "app", "sha256": sha256}]
    )
    reader, writer = await _open(made.url)
    request = _post("/api/chat", CHAT)
    head, body = request[: -len(CHAT)], CHAT
    writer.write(head)  # no key: refused before the body is read
    status, _, _ = await _read_answer(reader)
    assert status == 401
    writer.write(body + _post("/api/chat", CHAT))  # the rest of the body, then a next request
    status, _, _ = await _read_answer(reader)
    assert status == 401  # the body was not taken for a request
    assert _protocols(made) == [FastProtocol]
    writer.close()


async def test_a_head_that_never_completes_is_closed_after_the_header_timeout(
    cluster: ClusterFactory,
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]), limits__header_timeout=0.3)
    reader, writer = await _open(made.url)
    writer.write(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    cluster: ClusterFactory,
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]), limits__idle_timeout=0.3)
    reader, writer = await _open(made.url)
    writer.write(_post("/api/chat", CHAT))
    status, _, _ = await _read_answer(reader)
    assert status == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_an_error_after_an_answer_is_logged_and_ends_the_connection(
    cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A fault put where nothing in the request's task catches it: the keep-alive step after
    # the answer. No one awaits that task, so unless it is read, the error is lost (asyncio says
    # "Task exception was never retrieved", if ever) and the connection stays open untimed.
    made = await cluster(dict(name="a", models=[MODEL]), limits__idle_timeout=60)
    arm = FastProtocol._arm

    def arming(self: FastProtocol, seconds: float) -> None:
        if seconds == 60:
            raise RuntimeError("a fault after the answer")
        arm(self, seconds)

    monkeypatch.setattr(FastProtocol, "_arm", arming)
    reader, writer = await _open(made.url)
    writer.write(_post("/api/chat", CHAT))
    status, _, _ = await _read_answer(reader)
    assert status == 200  # answered by the data plane, whose step after it then failed
    assert await asyncio.wait_for(reader.read(), 5) == b""  # ended, not left open
    assert "unhandled error on a connection" in caplog.text
    assert "a fault after the answer" in caplog.text
    writer.close()


async def test_a_client_that_leaves_mid_stream_cancels_the_node_request(
    cluster: ClusterFactory,
) -> None:
    made = await cluster(dict(name="a", models=[MODEL], token_delay=0.05))
    node = made.node("a")
    reader, writer = await _open(made.url)
    body = b'{"model":"llama3.2","prompt":"x","options":{"num_predict":200}}'
    writer.write(_post("/api/generate", body))
    await asyncio.wait_for(reader.readuntil(b'"done":false}'), 10)
    assert _protocols(made) == [FastProtocol] and node.in_flight() == 1
    writer.close()
    await eventually(lambda: node.cancelled == 1 and node.in_flight() == 0, within=3)
    await eventually(lambda: made.fleet.nodes["a"].in_flight == 0, within=3)


async def test_the_lean_client_reuses_its_node_connections(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]))
    for _ in range(5):
        async with http.post(made.url + "/api/chat", data=CHAT) as response:
            assert response.status == 200
            await response.read()
    pool = made.proxy.runner.app[POOL]
    assert sum(len(idle) for idle in pool._idle.values()) == 1  # one connection, kept


async def test_the_aiohttp_engine_serves_everything_through_aiohttp(
    cluster: ClusterFactory,
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]), listen__engine="aiohttp")
    reader, writer = await _open(made.url)
    writer.write(_post("/api/chat", CHAT))
    status, _, body = await _read_answer(reader)
    assert status == 200 and orjson.loads(body)["done"] is True
    assert _protocols(made) == [ProxyProtocol]
    assert POOL not in made.proxy.runner.app
    writer.close()


def test_an_unknown_engine_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"listen\.engine.*expected fast or aiohttp"):
        load_config(None, env={}, overrides={"nodes": ["a:1"], "listen.engine": "nginx"})


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
async def test_the_first_heads_deadline_runs_from_the_connections_opening(
    cluster: ClusterFactory, engine: str
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL]), listen__engine=engine, limits__header_timeout=0.6
    )
    loop = asyncio.get_running_loop()
    reader, writer = await _open(made.url)
    opened = loop.time()
    await asyncio.sleep(0.4)  # silent, then the head a byte at a time
    head = b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 16\r\n\r\n"
    for byte in head:
        writer.write(bytes([byte]))
        await asyncio.sleep(0.05)
        if reader.at_eof() or writer.is_closing():
            break
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    assert loop.time() - opened < 0.9  # at the deadline from the opening, not the first byte
    writer.close()


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
async def test_a_head_with_bare_lf_line_ends_is_answered_400_at_once(
    cluster: ClusterFactory, engine: str
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL]), listen__engine=engine, limits__header_timeout=10
    )
    reader, writer = await _open(made.url)
    writer.write(b"POST /api/chat HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 2\n\n{}")
    answer = await asyncio.wait_for(reader.read(), 2)  # not the 10 s header deadline
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 Bad Request")
    assert orjson.loads(body)["error"].startswith("bad request: ")
    writer.close()
