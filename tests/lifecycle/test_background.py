"""The background-task registry: a stop cancels every task, and never hangs on one that
swallows its cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from sollol_proxy.lifecycle.background import Background


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    tasks = Background()
    task = tasks.start("stubborn", stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(tasks.close(patience=5.0), 5)  # the old close hung here
    assert task.cancelled() and swallowed == 2


async def test_a_task_that_never_stops_is_named_and_left_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    tasks = Background()
    task = tasks.start("deaf", deaf())
    quiet = tasks.start("quiet", asyncio.sleep(3600))
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="sollol.background"):
        await asyncio.wait_for(tasks.close(patience=0.3), 5)
    assert quiet.cancelled() and not task.done()
    assert "still running 0.3s after cancel: deaf" in caplog.text
    release.set()
    await task
