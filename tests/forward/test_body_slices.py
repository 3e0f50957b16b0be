"""README: "Bodies over 256 KiB go to the node in slices". A large body is written to the node
in slices with backpressure (pool.WRITE_SLICE on the data plane's pooled connections,
upstream.UPLOAD_SLICE on aiohttp's): the proxy never queues more than about a slice for the
node's socket, where one write of the whole body would queue almost all of it, copied in one
step of the event loop.

What is observed is the send buffer of the proxy's sockets to the node, sampled at every turn
of the event loop the proxy and this test share: asyncio registers a socket for writing exactly
while its transport holds unsent bytes.
"""

from __future__ import annotations

import asyncio
import selectors

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


def queued_for(port: int) -> int:
    """Bytes the loop's transports hold unsent for a peer on `port`."""
    loop = asyncio.get_running_loop()
    selector: selectors.BaseSelector = loop._selector  # type: ignore[attr-defined]
    queued = 0
    for key in selector.get_map().values():
        writer = key.data[1]  # (reader, writer) handles: a writer while bytes wait
        transport = getattr(getattr(writer, "_callback", None), "__self__", None)
        if isinstance(transport, asyncio.Transport):
            peer = transport.get_extra_info("peername")
            if peer and peer[1] == port:
                queued = max(queued, transport.get_write_buffer_size())
    return queued


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
async def test_a_large_body_goes_to_the_node_in_slices(
    cluster: ClusterFactory, http: aiohttp.ClientSession, engine: str
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]), listen__engine=engine)
    node = made.nodes[0]
    most = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, queued_for(node.port))
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
