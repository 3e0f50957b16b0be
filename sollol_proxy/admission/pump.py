"""Who gets the free slots: one pass of the waiting requests, most urgent first.

First the requests whose model is loaded on a free node, as long as their effective priority is
within `affinity_window` of the most urgent one (no model swap for them), then the rest in
order. Free nodes are worked out once per candidate set (`key`) and again only after a grant,
and the walk stops as soon as no waiting request can be served by any node: a pump costs
little more than the waiters it goes through, even in a long queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sollol_proxy.admission.tickets import Waiter
from sollol_proxy.admission.waitqueue import WaitQueue
from sollol_proxy.config import QueueConfig
from sollol_proxy.fleet.node import NodeState

Key = tuple[str, ...]


def pump(
    queue: WaitQueue,
    config: QueueConfig,
    free_of: Callable[[list[NodeState], str], list[NodeState]],
    grant: Callable[[Waiter, list[NodeState]], None],
    fail: Callable[[Key, Exception], None],
) -> None:
    """Hand free slots to waiting requests (`grant` offers a waiter the free nodes; `fail`
    answers every waiter of a candidate set whose candidates cannot be listed)."""
    if not queue.keys:
        return
    now = time.monotonic()
    free: dict[Key, list[NodeState]] = {}
    empty = 0  # candidate sets in `free` with no free node

    def free_for(waiter: Waiter) -> list[NodeState]:
        nonlocal empty
        key = waiter.key
        if key not in free:
            try:
                nodes = waiter.candidates()
            except Exception as exc:  # e.g. every node with the model went down meanwhile
                fail(key, exc)
                nodes = []
            free[key] = free_of(nodes, waiter.model)
            if not free[key] and key in queue.keys:
                empty += 1
        return waiter.offered(free[key], now)

    def granted(waiter: Waiter, nodes: list[NodeState]) -> None:
        nonlocal empty
        grant(waiter, nodes)
        free.clear()
        empty = 0

    first = next(queue.ordered(), None)
    if first is None:
        return
    floor = first.effective(now, config.ageing) - config.affinity_window
    for waiter in queue.ordered():  # pass 1: requests whose model is loaded on a free node
        if waiter.effective(now, config.ageing) < floor or empty >= len(queue.keys):
            break
        nodes = free_for(waiter)
        if waiter.queued and any(n.is_resident(waiter.model) for n in nodes):
            granted(waiter, nodes)
    for waiter in queue.ordered():  # pass 2: the rest, most urgent first
        if empty >= len(queue.keys):
            break
        nodes = free_for(waiter)
        if nodes and waiter.queued:
            granted(waiter, nodes)
