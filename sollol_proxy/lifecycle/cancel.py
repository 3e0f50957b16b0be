"""Cancelling tasks until they are over. Once is not always enough: a library below may finish
the call a cancellation arrived in and go on (asyncio's, aiohttp's and the Redis client's timers
turn cancellations into their own errors), and a stop that waits on such a task waits forever."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

AGAIN_S = 0.5  # a task still running this long after its cancellation gets another


async def cancel_until_done(
    tasks: Iterable[asyncio.Task[Any]], message: str | None = None, patience: float | None = None
) -> set[asyncio.Task[Any]]:
    """Cancel the tasks again and again until every one is over, or until `patience` seconds
    have passed; the tasks still running then are returned."""
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = None if patience is None else loop.time() + patience
    while pending:
        for task in pending:
            task.cancel(message)
        wait = AGAIN_S if deadline is None else min(AGAIN_S, deadline - loop.time())
        if wait <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=wait)
    return pending
