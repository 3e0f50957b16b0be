"""A retry's wait for a slot on another node: the request was admitted already, so it waits in
the queue outside its bounds, with what is left of its maximum wait, for any node it has not
tried; its slot moves there when the pump grants it (`Admission._grant`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from sollol_proxy.admission.tickets import Slot, Waiter
from sollol_proxy.admission.waitqueue import WaitQueue
from sollol_proxy.fleet.node import NodeState


async def wait_elsewhere(
    slot: Slot,
    tried: frozenset[str],
    remaining: float,
    queue: WaitQueue,
    seq: Iterator[int],
    pump: Callable[[], None],
) -> NodeState | None:
    """The node the released `slot`'s request moves to, or None when none frees in time."""
    origin = slot  # it keeps how the request asked for a slot

    def others() -> list[NodeState]:
        nodes = [n for n in origin.candidates() if n.name not in tried]
        if not nodes:  # gone or down meanwhile: the retry stops waiting (see the pump)
            raise LookupError("no node left to retry on")
        return nodes

    if remaining <= 0 or not slot.alternatives(tried):
        return None
    future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
    waiter = Waiter(
        origin.priority,
        origin.model,
        (*origin.key, "retry", *sorted(tried)),
        next(seq),
        origin.enqueued,
        others,
        origin.choose,
        origin.band,
        future,
        slot,
    )
    queue.push(waiter)  # admitted already: bounds do not apply
    pump()
    try:
        async with asyncio.timeout(remaining):
            return (await asyncio.shield(future)).node
    except TimeoutError:
        if future.done() and not future.exception():
            return future.result().node
        queue.remove(waiter)
        return None
    except Exception:  # no node left to wait for: the request's last failure is the answer
        return None
    except asyncio.CancelledError:
        if not future.done():
            queue.remove(waiter)
            future.cancel()
        raise
