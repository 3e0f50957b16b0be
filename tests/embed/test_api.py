"""Nothing blocks the event loop: a large batch-job submission is parsed and checked off it (on
it, every other request of the proxy waited 0.8s behind 30 MiB of documents)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson

from tests.conftest import ClusterFactory

MODEL = "nomic-embed-text"
# What a request may wait behind the submission: orjson still holds the interpreter's lock
# while it parses (0.13-0.2s here, more on a busy machine); on the loop, parsing and checking
# took 0.8s.
STALL_S = 0.5


async def test_a_large_batch_submission_does_not_stall_other_requests(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await cluster(dict(name="a", models=[MODEL]))
    docs = [{"id": f"doc-{i}", "text": "word " * 120} for i in range(50_000)]
    body = orjson.dumps({"model": MODEL, "docs": docs})  # about 30 MiB
    worst = 0.0
    done = asyncio.Event()

    async def ping() -> None:
        """A request every 10 ms: the worst gap between two answers, less the 10 ms, is the
        longest any request waited (the loop is this process's, the proxy's and the client's)."""
        nonlocal worst
        last = time.monotonic()
        while not done.is_set():
            async with http.get(c.url + "/api/version") as response:
                await response.read()
            now = time.monotonic()
            worst, last = max(worst, now - last - 0.01), now
            await asyncio.sleep(0.01)

    pinging = asyncio.create_task(ping())
    await asyncio.sleep(0.2)
    async with http.post(c.url + "/api/embed/batch", data=body) as response:
        assert response.status == 202, await response.text()
    await asyncio.sleep(0.2)
    done.set()
    await pinging
    assert worst < STALL_S, f"a request waited {worst:.2f}s behind the submission"
