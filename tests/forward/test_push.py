"""Streams pushed from the node's socket to the client's (forward/push.py): a client slower
than the node holds the node back instead of losing or reordering bytes, and each socket read
of the node reaches the client as one chunk of the client's framing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from sollol_proxy.forward.nodebody import NodeBody
from sollol_proxy.forward.nodewire import NodeProtocol
from sollol_proxy.forward.watchdog import IdleWatch
from tests.conftest import ClusterFactory, eventually

MODEL = "llama3.2:latest"
LONG = b'{"model":"llama3.2","prompt":"x","options":{"num_predict":60000}}'


def dechunk(data: bytes) -> list[bytes]:
    """The chunks of a chunked answer; asserts the framing is whole."""
    chunks, pos = [], 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol], 16)
        if size == 0:
            assert data[eol:] == b"\r\n\r\n"
            return chunks
        chunks.append(data[eol + 2 : eol + 2 + size])
        assert data[eol + 2 + size : eol + 4 + size] == b"\r\n"
        pos = eol + 4 + size


async def test_a_client_slower_than_the_node_gets_every_byte_in_order(
    cluster: ClusterFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = resumed = 0
    hold, go_on = NodeProtocol.hold, NodeBody.go_on

    def holding(protocol: NodeProtocol) -> None:
        nonlocal held
        held += 1
        hold(protocol)

    def going_on(body: NodeBody) -> None:
        nonlocal resumed
        resumed += 1
        go_on(body)

    monkeypatch.setattr(NodeProtocol, "hold", holding)
    monkeypatch.setattr(NodeBody, "go_on", going_on)
    made = await cluster(dict(name="a", models=[MODEL]))
    node = made.nodes[0]
    async with http.post(node.url + "/api/generate", data=LONG) as response:
        direct = await response.read()  # the node is deterministic: the same bytes again
    host, port = made.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few lines
    sock.connect((host, int(port)))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s"
        % (len(LONG), LONG)
    )
    # Nothing is read: the client's buffers fill, and the proxy stops reading the node.
    await eventually(lambda: held > 0, within=20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2**20)  # now read it quickly
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        data += await reader.read(65536)
    assert b"".join(dechunk(data)) == direct
    assert resumed > 0  # the node's socket was paused for the client, then read on
    writer.close()


async def test_each_read_of_the_node_is_one_chunk_to_the_client(
    cluster: ClusterFactory,
) -> None:
    # Tokens 20 ms apart: each is its own read of the node's socket, and its own chunk here.
    made = await cluster(dict(name="a", models=[MODEL], token_delay=0.02))
    host, port = made.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = b'{"model":"llama3.2","prompt":"x","options":{"num_predict":10}}'
    writer.write(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    await reader.readuntil(b"\r\n\r\n")
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        data += await reader.read(65536)
    chunks = dechunk(data)
    assert b"".join(chunks).count(b"\n") == 11  # ten tokens and the final object
    # Never merged, never split: one chunk per token (the final object may share the last
    # token's read, as the node writes them back to back).
    assert len(chunks) in (10, 11) and all(chunk.endswith(b"\n") for chunk in chunks)
    writer.close()


async def test_a_pushed_chunk_is_one_call_of_the_node_protocol_and_one_of_the_sink(
    cluster: ClusterFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The common read of a stream (one whole chunk, as Ollama flushes a token) goes from the
    # node protocol's callback straight to the pusher: not through the general framing, the
    # body's feed or the idle watchdog's methods, whose calls stay the same however long the
    # stream is.
    calls = {"framing": 0, "feed": 0, "watchdog": 0}

    def counting(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            calls[name] += 1
            return method(*args)

        return counted

    monkeypatch.setattr(
        NodeProtocol, "_read_chunked", counting("framing", NodeProtocol._read_chunked)
    )
    monkeypatch.setattr(NodeBody, "feed", counting("feed", NodeBody.feed))
    monkeypatch.setattr(IdleWatch, "reading", counting("watchdog", IdleWatch.reading))
    made = await cluster(dict(name="a", models=[MODEL], token_delay=0.01))

    async def stream(tokens: int) -> dict[str, int]:
        for name in calls:
            calls[name] = 0
        body = b'{"model":"llama3.2","prompt":"x","options":{"num_predict":%d}}' % tokens
        async with http.post(made.url + "/api/generate", data=body) as response:
            lines = (await response.read()).splitlines()
        assert len(lines) == tokens + 1
        return dict(calls)

    await stream(2)  # the connection pooled, the model loaded
    short, long = await stream(5), await stream(40)
    assert all(long[name] - short[name] <= 2 for name in calls), (short, long)
