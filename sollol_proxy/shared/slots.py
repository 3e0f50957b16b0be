"""The admission gate of replicas sharing slots and the order of waiting requests in Redis.

A request first gets a slot from this replica's admission control as always (local queue,
priority, late binding, holds); then one script in Redis (`scripts.GRANT`, through the ordered
writer of `leases.py`) grants the lease only if the slots all replicas hold on that node for
that model, plus the more urgent waiters of other replicas, stay under the capacity belief
(`model_room`: the learned slots plus the probe margin). Refused, the request gives its local
slot back, is registered among the model's waiters (by urgency: arrival minus priority times
`queue.ageing`, so ageing orders replicas as it orders one queue), and waits here (`_park`),
most urgent first, for a release to be announced; it then asks again, keeping its place in
the local queue. A request about to wait in the local queue registers first, so that a freed
slot goes to the most urgent request of any replica. What the other replicas hold on each node,
as last heard, steers the choice of node (`_room`); Redis always decides.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

from sollol_proxy.admission.admission import Admission
from sollol_proxy.admission.gate import LocalAdmit
from sollol_proxy.admission.tickets import Held, QueueRejected, Slot
from sollol_proxy.fleet.capacity import model_room
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.shared.leases import ALONE, REFUSED, Leases
from sollol_proxy.shared.link import Link

# How long what another replica holds on a node, as last heard, is trusted; past it the
# grant script, which always knows, decides.
FRESH_S = 1.0
# A refused request asks again at the next announced release of its model, or after this.
RECHECK_S = 0.25


class SharedHeld:
    """`async with admission.admit(...)` with Redis on: the local slot, then the lease."""

    __slots__ = ("_candidates", "_local", "_model", "_priority", "_shared", "held")

    def __init__(
        self,
        shared: SharedSlots,
        local: LocalAdmit,
        priority: int,
        model: str,
        candidates: Callable[[], list[NodeState]],
    ) -> None:
        self._shared = shared
        self._local = local
        self._priority = priority
        self._model = model
        self._candidates = candidates
        self.held: Held | None = None

    async def __aenter__(self) -> Slot:
        slot, self.held = await self._shared.acquire(
            self._local, self._priority, self._model, self._candidates
        )
        return slot

    async def __aexit__(self, *exc_info: object) -> None:
        if self.held is not None:  # its lease is given back with the slot (`give`)
            await self.held.__aexit__(*exc_info)


class SharedSlots:
    def __init__(self, link: Link, admission: Admission) -> None:
        self._link = link
        self._admission = admission
        self.leases = Leases(link, self._heard, self._unpark)
        self._remote: dict[tuple[str, str], tuple[int, float]] = {}  # others' slots, when heard
        # Refused requests, per model, most urgent first: (urgency, seq, woken when).
        self._parked: dict[str, list[tuple[float, int, asyncio.Future[None]]]] = {}
        self._seq = itertools.count()
        link.handlers["freed"] = self._freed
        admission.gate = self

    # -- the admission gate -------------------------------------------------------------------

    def admit(
        self,
        local: LocalAdmit,
        priority: int,
        model: str,
        candidates: Callable[[], list[NodeState]],
    ) -> SharedHeld:
        return SharedHeld(self, local, priority, model, candidates)

    def _room(self, node: NodeState, model: str) -> bool:
        """Whether the other replicas, as last heard, leave this replica a slot there (beside
        the slots its own table holds, granted or about to be)."""
        heard = self._remote.get((node.name, model))
        if heard is None or time.monotonic() - heard[1] > FRESH_S:
            return True
        local = self._admission.slots.in_use(node.name).get(model, 0)
        return heard[0] + local < model_room(node, model)

    async def acquire(
        self,
        local: LocalAdmit,
        priority: int,
        model: str,
        candidates: Callable[[], list[NodeState]],
    ) -> tuple[Slot, Held]:
        waiter = f"{self._link.replica}:{next(self._seq)}"
        urgency = time.time() - priority * self._admission.config.ageing
        asked = time.monotonic()
        deadline = asked + self._admission.config.max_wait
        again: float | None = None  # a refused request keeps its place in the local queue

        def free() -> list[NodeState]:
            # The nodes other replicas, as last heard, leave room on; all of them when none
            # does: then Redis decides, and a refused request waits in `_park`, in order.
            nodes = candidates()
            return [n for n in nodes if self._room(n, model)] or nodes

        try:
            if self._link.up and self._will_wait(free, model):
                # It will wait in the local queue: it takes its place in the shared order first.
                await self.leases.enqueue(waiter, model, urgency)
            while True:
                held = local(free, again)
                slot = await held.__aenter__()
                node = slot.node
                assert node is not None
                try:
                    verdict = await self.leases.grant(
                        node.name, model, waiter, urgency, model_room(node, model)
                    )
                except BaseException:
                    self.leases.unleased(node.name, model)
                    await held.__aexit__(None, None, None)
                    raise
                if verdict != REFUSED:
                    if verdict == ALONE:
                        self.leases.forget(waiter, model)
                    self.leases.waiters.pop(waiter, None)
                    slot.waited_s = time.monotonic() - asked
                    return slot, held
                self.leases.waiters[waiter] = model
                again = asked
                self.leases.unleased(node.name, model)
                await held.__aexit__(None, None, None)
                ahead_only = self.leases.saw_free.pop(waiter, False)
                if not ahead_only and self._room_elsewhere(candidates, node, model):
                    continue
                if time.monotonic() >= deadline:
                    raise QueueRejected(
                        f"sollol-proxy: no free slot for model '{model}' within "
                        f"{self._admission.config.max_wait:g}s (priority {priority}); the "
                        "fleet is at capacity",
                        "timeout",
                        self._admission.config.max_wait,
                    )
                await self._park(model, urgency, ahead_only)
        except BaseException:
            self.leases.forget(waiter, model)
            raise

    def _will_wait(self, free: Callable[[], list[NodeState]], model: str) -> bool:
        """Whether the local queue is about to hold the request: others wait there, or this
        replica's own slots on the candidate nodes are all taken."""
        if self._admission.waiting:
            return True
        try:
            return not any(self._admission.is_free(n, model) for n in free())
        except Exception:  # no candidates at all: admission answers that itself
            return False

    def _room_elsewhere(
        self, candidates: Callable[[], list[NodeState]], full: NodeState, model: str
    ) -> bool:
        """Refused because `full` is full: another node may still have room."""
        try:
            return any(n is not full and self._room(n, model) for n in candidates())
        except Exception:  # no candidates left: the next local admission answers that
            return False

    async def _park(self, model: str, urgency: float, ahead_only: bool) -> None:
        """A refused request waits here, in urgency order, until a release of its model is
        announced (or, when a slot was free but promised to more urgent requests, briefly:
        those may be gone). Only this replica's most urgent refused requests then ask again."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        parked = self._parked.setdefault(model, [])
        heapq.heappush(parked, (urgency, next(self._seq), future))
        # Only the most urgent asks again by itself (a lost announcement, a waiter that died);
        # the others are woken in turn.
        if parked[0][2] is not future:
            timeout = self._link.policy.lease_ttl
        else:
            timeout = RECHECK_S if ahead_only else FRESH_S
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            pass
        finally:
            future.cancel()  # left in the heap, skipped when popped

    def _unpark(self, model: str) -> None:
        """The most urgent refused request of `model` asks again now."""
        parked = self._parked.get(model)
        while parked:
            _, _, future = heapq.heappop(parked)
            if not future.done():
                future.set_result(None)
                for key in [k for k in self._remote if k[1] == model]:
                    del self._remote[key]  # it asks Redis, which knows better
                return
        self._parked.pop(model, None)

    def give(self, node: NodeState, model: str) -> None:
        self.leases.give(node.name, model)

    def _heard(self, node: str, model: str, others: int, promised: int) -> None:
        """What the other replicas hold on `node` for `model`, and the slots promised to their
        more urgent waiters: until a release is announced, that much is not free here."""
        self._remote[(node, model)] = (others + promised, time.monotonic())

    def _freed(self, event: dict[str, Any]) -> None:
        node, model, total = event.get("node"), event.get("model"), event.get("total")
        if not isinstance(node, str) or not isinstance(model, str) or not isinstance(total, int):
            return
        self._heard(node, model, max(total - self.leases.mine[(node, model)], 0), 0)
        self._unpark(model)
        self._admission.wake()
