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


async def test_a_failed_task_is_logged_with_its_name_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> None:
        raise RuntimeError("the watcher broke")

    tasks = Background()
    with caplog.at_level(logging.ERROR, logger="sollol.background"):
        task = tasks.start("watch:gpu1", broken())
        await asyncio.wait([task])
        await asyncio.sleep(0)  # the done callback
    assert "background task watch:gpu1 failed" in caplog.text
    assert "RuntimeError: the watcher broke" in caplog.text
    await tasks.close()


async def test_a_task_started_while_closing_is_cancelled_and_awaited_too() -> None:
    """A task that starts another as it is cancelled (a reload applying a configuration starts
    node watchers) left that one running after close()."""
    tasks = Background()
    children: list[asyncio.Task[None]] = []

    async def parent() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            children.append(tasks.start("child", asyncio.sleep(3600)))
            raise

    tasks.start("parent", parent())
    await asyncio.sleep(0)
    await asyncio.wait_for(tasks.close(patience=5.0), 5)
    assert len(children) == 1 and children[0].cancelled()


async def test_a_task_started_after_close_never_runs() -> None:
    """A SIGHUP after the stop began would reload into a fleet whose session is closed."""
    tasks = Background()
    await tasks.close()
    ran = False

    async def late() -> None:
        nonlocal ran
        ran = True

    task = tasks.start("reload:SIGHUP", late())
    await asyncio.wait([task])
    assert task.cancelled() and not ran
