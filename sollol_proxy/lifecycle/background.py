"""The app's background tasks, in one place (node watchers, retiring nodes, reloads)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from sollol_proxy.lifecycle.cancel import cancel_until_done

T = TypeVar("T")

log = logging.getLogger("sollol.background")

# Beyond this a stop goes on without a task that will not end, and says which one.
CLOSE_PATIENCE_S = 10.0


class Background:
    """Every background task of the app: tracked here, cancelled and awaited at cleanup, and a
    task that ends with an exception is logged rather than lost."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def start(self, name: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        if self._closing:  # once a stop began nothing new runs (a SIGHUP's reload, say)
            task.cancel()
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self, patience: float = CLOSE_PATIENCE_S) -> None:
        """Cancel every task and wait for them; a stop never hangs on one that will not end.
        Tasks started meanwhile (a task may start another as it ends) are waited for too."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while running := {t for t in self._tasks if not t.done()}:
            left = await cancel_until_done(running, patience=max(0.0, deadline - loop.time()))
            if left:
                names = ", ".join(sorted(t.get_name() for t in left))
                log.error("background tasks still running %gs after cancel: %s", patience, names)
                return
