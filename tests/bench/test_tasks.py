"""bench/tasks: a measuring task's failure is not lost when the benchmark stops it."""

from __future__ import annotations

import asyncio

import pytest

from sollol_proxy.bench.tasks import stop


async def test_a_running_task_is_cancelled_and_awaited() -> None:
    running = asyncio.create_task(asyncio.sleep(60))
    await stop(running)
    assert running.cancelled()


async def test_a_task_that_failed_raises_its_error() -> None:
    async def probe() -> None:
        raise ConnectionResetError("the probe failed")

    failed = asyncio.create_task(probe())
    running = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    with pytest.raises(ConnectionResetError, match="the probe failed"):
        await stop(failed, running)
    assert running.cancelled()
