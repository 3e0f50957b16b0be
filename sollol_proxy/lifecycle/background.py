"""The app's background tasks, in one place (node watchers, retiring nodes, reloads)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("sollol.background")

# A task still running this long after being cancelled is cancelled again: some libraries (the
# Redis client among them, seen in tests) can finish the call a cancellation arrived in and go on.
RECANCEL_S = 0.5
# Beyond this the stop goes on without the task, and says which one would not stop.
CLOSE_PATIENCE_S = 10.0


class Background:
    """Every background task of the app: tracked here, cancelled and awaited at cleanup, and a
    task that ends with an exception is logged rather than lost."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, name: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self, patience: float = CLOSE_PATIENCE_S) -> None:
        """Cancel every task and wait for them; a stop never hangs on one that will not end."""
        pending = set(self._tasks)
        deadline = asyncio.get_running_loop().time() + patience
        while pending:
            for task in pending:
                task.cancel()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                names = ", ".join(sorted(t.get_name() for t in pending))
                log.error("background tasks still running %gs after cancel: %s", patience, names)
                return
            _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, left))
