"""A few workers that share one piece of work, stopped together.

A split call and a batch job each run one worker per place the model has in the fleet (its
slots, and for an embedding model one request queued behind them: capacity.model_room). Workers
wait for slots in the admission queue; once the work is done, those still waiting are spare and
are withdrawn (not counted as clients that left). The first worker to fail stops the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sollol_proxy.admission.admission import WITHDRAWN
from sollol_proxy.lifecycle.cancel import cancel_until_done


async def run_crew(
    worker: Callable[[int], Awaitable[None]], count: int, finished: asyncio.Event
) -> None:
    """Run `count` workers until they all return or `finished` is set; a worker's exception
    stops the others and is raised."""
    tasks = [asyncio.create_task(worker(k), name=f"embed-worker-{k}") for k in range(count)]
    done_waiter = asyncio.create_task(finished.wait())
    try:
        pending = set(tasks)
        while pending:
            done, _ = await asyncio.wait(
                pending | {done_waiter}, return_when=asyncio.FIRST_COMPLETED
            )
            if done_waiter in done:
                return
            for task in done:
                pending.discard(task)
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
    finally:
        await _withdraw([*tasks, done_waiter])


async def _withdraw(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the workers until every one is over: a worker was seen to go on after its
    cancellation was swallowed below `SubCalls.run`, then wait for the others' results forever,
    and the shutdown with it."""
    await cancel_until_done(tasks, WITHDRAWN)
    for task in tasks:  # retrieved: an error after the cancellation is not worth a warning
        if not task.cancelled():
            task.exception()
