"""What a request holds in admission control leaves nothing for the garbage collector: no
reference cycle per request, whether it found a free slot at once or waited for one."""

from __future__ import annotations

import asyncio
import collections
import gc

import aiohttp
import orjson
import pytest

from sollol_proxy.app import ADMISSION
from tests.conftest import ClusterFactory

MODEL = "llama3.2:latest"


@pytest.mark.parametrize("slots", [8, 1])  # 8: nobody waits; 1: most requests queue
async def test_a_burst_of_requests_leaves_no_cyclic_garbage(
    cluster: ClusterFactory, http: aiohttp.ClientSession, slots: int
) -> None:
    made = await cluster(dict(name="a", models=[MODEL], num_parallel=slots))
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    generate = {"model": "llama3.2", "prompt": "hi", "options": {"num_predict": 8}}

    statuses: list[int] = []

    async def client(requests: int) -> None:  # 8 clients: more than one slot, not more than 8
        for n in range(requests):
            path, body = ("/api/chat", chat) if n % 2 else ("/api/generate", generate)
            async with http.post(made.url + path, data=orjson.dumps(body)) as response:
                await response.read()
                statuses.append(response.status)

    await asyncio.gather(*(client(2) for _ in range(8)))  # warm: connections, the model
    statuses.clear()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector frees is kept in gc.garbage instead
    try:
        await asyncio.gather(*(client(25) for _ in range(8)))
        gc.collect()
        garbage = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert statuses == [200] * 200
    queued = made.proxy.runner.app[ADMISSION].snapshot()["by_priority"]["5"]["queued"]
    assert (queued > 50) == (slots == 1)
    assert not garbage, garbage.most_common(10)  # found by this collection or one before
