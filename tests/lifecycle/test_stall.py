"""A client that stops reading is cut after limits.write_timeout, whatever it is sent: the
proxy's own answers (a fleet view) and answers relayed from the node, on both engines."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from tests.conftest import ClusterFactory, eventually

# Enough models that a pipelined burst of /api/tags answers outgrows the kernel's buffers.
MODELS = [f"model-{i:03d}-with-a-long-enough-name:latest" for i in range(60)]
SHOW = b'{"model":"model-000-with-a-long-enough-name"}'
REQUESTS = {
    "view": b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "relayed": b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s"
    % (len(SHOW), SHOW),
}


async def small_window_connection(
    url: str,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection whose kernel receive buffer is small, so that what it does not read
    soon stays on the proxy's side."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return await asyncio.open_connection(sock=sock)


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
@pytest.mark.parametrize("route", ["view", "relayed"])
async def test_a_pipelining_client_that_reads_nothing_is_cut_after_the_write_timeout(
    cluster: ClusterFactory, caplog: pytest.LogCaptureFixture, engine: str, route: str
) -> None:
    caplog.set_level(logging.WARNING, logger="sollol.limits")
    made = await cluster(
        dict(name="a", models=MODELS),
        listen__engine=engine,
        limits__write_timeout=0.5,
        limits__idle_timeout=600,  # the write bound cuts it, not the idle one
    )
    server = made.proxy.runner.server
    reader, writer = await small_window_connection(made.url)
    writer.write(REQUESTS[route] * 4000)  # never read: the answers pile up on the proxy's side
    # Read nothing until the proxy has given up on it.
    await eventually(lambda: "cut a connection from" in caplog.text, within=30)
    await eventually(lambda: not server.connections)
    with pytest.raises(ConnectionResetError):  # reset, the unsent answers dropped
        while await reader.read(2**16):
            pass
    writer.close()


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
async def test_a_connection_closed_with_bytes_unsent_is_cut_after_the_write_timeout(
    cluster: ClusterFactory, caplog: pytest.LogCaptureFixture, engine: str
) -> None:
    caplog.set_level(logging.WARNING, logger="sollol.limits")
    made = await cluster(
        dict(name="a", models=MODELS),
        listen__engine=engine,
        limits__write_timeout=0.5,
        limits__idle_timeout=0.3,
    )
    server = made.proxy.runner.server
    reader, writer = await small_window_connection(made.url)
    await eventually(lambda: len(server.connections) == 1)
    # Small kernel buffers on both sides; answers (22 KiB each), never read, until part of one
    # stays in the proxy's own buffer, under the mark at which a write counts as blocked. A few
    # KiB left there may still go: the kernel takes a little more a moment later (a 4 KiB rest
    # did, leaving nothing unsent to bound), so at least 16 KiB.
    transport = server.connections[0].transport
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for _ in range(50):
        writer.write(REQUESTS["view"])
        await asyncio.sleep(0.05)
        if transport.get_write_buffer_size() >= 2**14:
            break
    assert 2**14 <= transport.get_write_buffer_size() < 2**16
    # The idle timeout closes the connection: the flush it waits for is bounded.
    await eventually(lambda: "cut a connection from" in caplog.text, within=5)
    await eventually(lambda: not server.connections)
    with pytest.raises(ConnectionResetError):
        while await reader.read(2**16):
            pass
    writer.close()
