"""The idle-read bound of a relayed stream: no timer per chunk, a steady stream is never cut,
a silent one still is (tests/forward/test_faults.py, test_resilience.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from sollol_proxy.config import load_config
from sollol_proxy.server import start_proxy
from sollol_proxy.simulator import SimulatedNode
from tests.conftest import TEST_SETTINGS, ClusterFactory

MODEL = "llama3.2:latest"


class NodeThread:
    """A simulated node on its own event loop in a thread: the test's loop runs only the proxy
    and its client, so that what is scheduled on it is the proxy's."""

    def __init__(self, **spec: Any) -> None:
        self.node = SimulatedNode(name="a", models=[MODEL], deterministic=True, **spec)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> SimulatedNode:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.node.start(port=0), self.loop).result(10)
        return self.node

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.node.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
async def proxied() -> AsyncIterator[str]:
    with NodeThread(token_delay=0.002) as node:
        settings = {**TEST_SETTINGS, "health.interval": 30.0, "inventory.interval": 60.0}
        config = load_config(
            None, env={}, overrides={**settings, "nodes": [{"url": node.url, "name": "a"}]}
        )
        proxy = await start_proxy(config)
        try:
            yield proxy.url
        finally:
            await proxy.stop()


async def _stream(http: aiohttp.ClientSession, url: str, tokens: int) -> int:
    body = {"model": "llama3.2", "prompt": "count", "options": {"num_predict": tokens}}
    async with http.post(url + "/api/generate", data=orjson.dumps(body)) as response:
        assert response.status == 200
        lines = (await response.read()).splitlines()
    assert orjson.loads(lines[-1])["done"] is True
    return len(lines)


async def test_no_timer_is_scheduled_per_chunk(
    proxied: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    scheduled = 0
    call_at: Callable[..., asyncio.TimerHandle] = loop.call_at

    def counting(when: float, callback: Callable[..., object], *args: Any, **kw: Any) -> Any:
        nonlocal scheduled
        scheduled += 1
        return call_at(when, callback, *args, **kw)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        await _stream(http, proxied, 5)  # connections and the model warm
        monkeypatch.setattr(loop, "call_at", counting)
        assert await _stream(http, proxied, 20) == 21
        short = scheduled
        scheduled = 0
        assert await _stream(http, proxied, 400) == 401  # about 0.8 s of chunks 2 ms apart
        long = scheduled
    # 380 more chunks, each one read on its own: a timer per read would make that many more.
    assert long - short < 40, (short, long)


async def test_a_steady_stream_longer_than_the_idle_bound_is_not_cut(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL], token_delay=0.1), timeouts__idle_read=0.3)
    assert await _stream(http, made.url, 12) == 13  # 1.2 s in all, never 0.3 s silent
