"""README: "Bodies over 256 KiB go to the node in slices". A large body is written to the node
in slices with backpressure (pool.WRITE_SLICE on the data plane's pooled connections,
upstream.UPLOAD_SLICE on aiohttp's): the proxy never queues more than about a slice for the
node's socket, where one write of the whole body would queue almost all of it, copied in one
step of the event loop.

What is observed is the send buffer of the proxy's sockets to the node, sampled at every turn
of the event loop the proxy and this test share: every connection either engine opens to the node
is made by the loop's public `create_connection`, which the test wraps to keep the transports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from sollol_proxy.forward.pool import WRITE_SLICE
from sollol_proxy.forward.upstream import UPLOAD_SLICE
from tests.conftest import ClusterFactory

MODEL = "llama3.2"
SIZE = 32 * 2**20


def chat(size: int) -> bytes:
    head = b'{"model":"llama3.2","stream":false,"options":{"num_predict":1},"messages":['
    head += b'{"role":"user","content":"'
    tail = b'"}]}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


def keep_transports(
    monkeypatch: pytest.MonkeyPatch, loop: asyncio.AbstractEventLoop
) -> list[asyncio.Transport]:
    """Every transport the loop connects from now on (the pooled and aiohttp's connections alike
    are made by `loop.create_connection`), without reaching into the loop's private state."""
    made: list[asyncio.Transport] = []
    connect: Callable[..., Awaitable[tuple[Any, Any]]] = loop.create_connection

    async def connecting(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        transport, protocol = await connect(*args, **kwargs)
        made.append(transport)
        return transport, protocol

    monkeypatch.setattr(loop, "create_connection", connecting)
    return made


def queued_for(transports: list[asyncio.Transport], port: int) -> int:
    """Bytes the transports connected to `port` hold unsent."""
    queued = 0
    for transport in transports:
        peer = transport.get_extra_info("peername")
        if peer and peer[1] == port:
            queued = max(queued, transport.get_write_buffer_size())
    return queued


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
async def test_a_large_body_goes_to_the_node_in_slices(
    cluster: ClusterFactory,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    engine: str,
) -> None:
    # Before the proxy starts: its probes open the connection the request may then reuse.
    transports = keep_transports(monkeypatch, asyncio.get_running_loop())
    made = await cluster(dict(name="a", models=[MODEL]), listen__engine=engine)
    node = made.nodes[0]
    most = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, queued_for(transports, node.port))
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample())
    try:
        async with http.post(made.url + "/api/chat", data=chat(SIZE)) as response:
            assert response.status == 200, await response.text()
            await response.read()
    finally:
        done.set()
        await sampler
    assert [len(r.body) for r in node.requests if r.path == "/api/chat"] == [SIZE]
    assert WRITE_SLICE == UPLOAD_SLICE == 256 * 1024  # README: "in slices" of 256 KiB
    # About a slice plus what asyncio keeps before it pauses the writer; one write of the whole
    # body queues about 29 MB here (measured with the slices set to 256 MiB).
    assert 0 < most <= 2 * 256 * 1024, most
