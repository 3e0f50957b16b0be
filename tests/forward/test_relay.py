"""Relaying a node's answer: the slot goes on when the node has sent its last byte, not when the
client has taken the answer, over real sockets (a simulated node, the real proxy)."""

from __future__ import annotations

import asyncio
import gc
import socket

import aiohttp
import orjson

from sollol_proxy.app import ADMISSION
from tests.conftest import ClusterFactory, eventually

# Tokens of the slow client's answer (about 110 bytes each): more than the proxy and the kernel
# buffer towards a client that reads nothing (64 KiB and a few KB: the relay's write to it
# blocks), much less than they hold from the node (the reader's 128 KiB, the kernel's buffers).
TOKENS = 2000


def chat(prompt: str, tokens: int) -> bytes:
    return orjson.dumps(
        {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": prompt}],
            "options": {"num_predict": tokens},
        }
    )


async def stalled_client(url: str, body: bytes) -> socket.socket:
    """A client that sends a chat and reads nothing of the answer (a receive window of a few KB)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    head = (
        f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    await asyncio.get_running_loop().sock_sendall(sock, head + body)
    await narrow(sock)
    return sock


async def narrow(client: socket.socket) -> None:
    """Keep the proxy's kernel buffer towards `client` small, as on a slow link (left alone,
    Linux grows it to megabytes): the proxy's end of the connection is in this process."""
    address = client.getsockname()
    for _ in range(100):
        for obj in gc.get_objects():
            if isinstance(obj, asyncio.Transport) and obj.get_extra_info("peername") == address:
                obj.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the proxy never accepted the connection")


async def read_all(sock: socket.socket) -> list[bytes]:
    """The rest of a chunked answer, up to its last chunk: its NDJSON lines."""
    received = b""
    while not received.endswith(b"\r\n0\r\n\r\n"):
        data = await asyncio.get_running_loop().sock_recv(sock, 65536)
        assert data, "the proxy closed the connection before the end of the answer"
        received += data
    body, rest = b"", received.split(b"\r\n\r\n", 1)[1]
    while not rest.startswith(b"0\r\n"):
        size, rest = rest.split(b"\r\n", 1)
        body, rest = body + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
    return body.splitlines()


async def test_the_slot_goes_to_the_next_request_before_a_slow_client_has_the_answer(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # One slot. The aiohttp engine reads the node through aiohttp's reader, which reads ahead
    # of a slow client (128 KiB); the fast engine's pushed relay (push.py) stops reading the
    # node as soon as the client's buffer is full, so there the node's end, and the slot,
    # come only as the client drains.
    made = await cluster(
        dict(name="a", models=["llama3.2"], token_delay=0.001), listen__engine="aiohttp"
    )
    node = made.node("a")
    slow = await stalled_client(made.url, chat("slow", TOKENS))
    await eventually(lambda: len(node.slot_uses) == 1)
    # The next request waits in the proxy's queue for that slot; it is answered while the
    # first client still has not read a byte of its own answer (the node had finished it,
    # and the relay's write to that client was blocked), rather than never.
    async with asyncio.timeout(10):  # a bound on the failure, not a speed
        async with http.post(made.url + "/api/chat", data=chat("next", 2)) as response:
            assert response.status == 200
            assert orjson.loads((await response.read()).splitlines()[-1])["done"] is True
    assert made.proxy.runner.app[ADMISSION].stats[5].queued == 1  # it did wait for the slot
    assert node.stats.requests == 2
    # The slow client then gets its whole answer, unchanged, ending with the final object.
    lines = await read_all(slow)
    slow.close()
    assert len(lines) == TOKENS + 1
    assert orjson.loads(lines[-1])["done"] is True
