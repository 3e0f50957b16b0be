"""Where this replica's refused requests wait for a slot (`slots.SharedSlots`, which is one):
parked per model, most urgent first, until a release hands one of them a slot, a release leaves
one for this replica's own waiters, or Redis goes away or no longer counts them."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Iterator

from sollol_proxy.admission.admission import Admission
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.shared.leases import Leases

# How long what another replica holds on a node, as last heard, is trusted; past it the
# grant script, which always knows, decides.
FRESH_S = 1.0


class Parking:
    _admission: Admission
    leases: Leases
    # Refused requests, per model, most urgent first: (urgency, seq, waiter, woken when, with
    # the node whose slot was handed here), and by waiter.
    _parked: dict[str, list[tuple[float, int, str, asyncio.Future[str | None]]]]
    _waiting: dict[str, asyncio.Future[str | None]]
    _live: set[str]  # waiters of requests still asking for a slot here
    _timers: dict[str, asyncio.Timeout]  # each parked waiter's time to ask again by itself
    _kept: dict[str, NodeState]  # a woken parked waiter -> the node its local slot is kept on
    _nodes: dict[str, NodeState]  # the nodes this replica's requests went to, by name
    _seq: Iterator[int]

    async def _park(
        self, model: str, urgency: float, waiter: str, until: float, claim: set[str] | None
    ) -> str | None:
        """A refused request waits here, registered in Redis, until a release hands it (or,
        its own having left, this replica) a slot: the node's name. Only this replica's most
        urgent refused request asks again by itself, after FRESH_S (a lost event, a slot freed
        by a replica that died); the next one is the most urgent when it leaves. `claim`: it
        first takes a slot handed here and not taken, on any node but those (None: none)."""
        unclaimed = None if claim is None else self.leases.unclaimed(model, waiter, claim)
        if unclaimed is not None:  # handed here while this request was asking elsewhere
            return unclaimed
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        parked = self._parked.setdefault(model, [])
        heapq.heappush(parked, (urgency, next(self._seq), waiter, future))
        while parked[0][3].done():  # those that left: gone from the top
            heapq.heappop(parked)
        self._waiting[waiter] = future
        # The others wait for their turn, however long: their registration is kept in Redis,
        # and a slot handed to one that never heard of it goes back to the pool (HAND_TTL_MS).
        timeout = FRESH_S if parked[0][3] is future else max(until - time.monotonic(), 0.0)
        timer = self._timers[waiter] = asyncio.timeout(timeout)
        try:
            async with timer:
                return await future
        except TimeoutError:
            return None
        finally:
            future.cancel()  # left in the heap, skipped when popped
            del self._waiting[waiter]
            del self._timers[waiter]
            self._next_first(model)

    def _next_first(self, model: str) -> None:
        """The most urgent parked request of `model` left: the next one asks again by itself
        within FRESH_S (it was parked to wait for its turn, up to its deadline)."""
        parked = self._parked.get(model)
        while parked and parked[0][3].done():
            heapq.heappop(parked)
        if not parked:
            self._parked.pop(model, None)
            return
        timer = self._timers.get(parked[0][2])
        when = asyncio.get_running_loop().time() + FRESH_S
        if timer is not None and (timer.when() or when) > when:
            timer.reschedule(when)

    def _parked_for(self, model: str) -> bool:
        """Whether refused requests of this replica wait for a slot for `model`."""
        parked = self._parked.get(model)
        while parked and parked[0][3].done():
            heapq.heappop(parked)
        return bool(parked)

    def _handed(self, node: str, model: str, waiter: str, kept: bool = False) -> None:
        """A slot of `node` was handed to this replica for `waiter`: that request takes it if it
        is still parked, else the most urgent one parked for the model, else the local queue
        (`Leases.take`); nobody taking it, it goes back after `handed.RESERVE_S`. `kept`: the
        local slot of `node` was kept for `waiter` (`_pass_on`): it goes with the handed one,
        or back to the local table if that request is gone."""
        future = self._waiting.get(waiter)
        if kept:
            state = self._nodes[node]
            if future is not None and not future.done():
                self._kept[waiter] = state
            else:
                self._admission.slots.give(state, model)
        if future is not None and not future.done():
            # Its own: no request of the local queue, let in by the handed slot
            # (`slots.reserved`), takes it first.
            self.leases.promised[waiter] = waiter
        elif waiter in self._live:
            # Asking Redis or on its way to wait: it finds it (`unclaimed`, `take`, or its
            # grant takes it in Redis); the local queue may have a request for it meanwhile.
            future = None
        else:
            future = None
            parked = self._parked.get(model)
            while parked and future is None:
                _, _, woken, candidate = heapq.heappop(parked)
                future = None if candidate.done() else candidate
            if not parked:
                self._parked.pop(model, None)
            if future is not None:
                self.leases.promised[woken] = waiter  # no other request takes it
        if future is not None:
            future.set_result(node)
        else:
            self._admission.wake()

    def _ask_again(self, waiter: str) -> None:
        """Redis no longer counts `waiter` among the waiters (a hand-over whose event was lost):
        if it is parked, it asks again (and so takes its place again) rather than wait for a
        hand-over that will not come."""
        future = self._waiting.get(waiter)
        if future is not None and not future.done():
            future.set_result(None)

    def _unpark(self) -> None:
        """Redis went away or came back: every refused request asks again at once (alone, or
        registered anew). A restarted Redis forgot their registrations, and while it is away
        no release hands them a slot: parked, they would wait out `queue.max_wait`."""
        for future in self._waiting.values():
            if not future.done():
                future.set_result(None)

    def _pass_on(self, node: NodeState, model: str) -> tuple[str, bool]:
        """A leased slot of `node` is given back: this replica's most urgent parked request of
        `model` if it goes before the local queue (the release asks Redis to hand it the slot in
        its turn, `scripts.RELEASE`), else "", and whether the slot is kept in the local table
        for it until the release's answer tells whose it is (`_handed`, `_own_turn`): while
        the local queue has requests, since the pump, which runs next, would give it to a later
        arrival. Waking the parked request at once measured worse: most such slots go to
        another replica's more urgent waiter, and the woken request's grant was refused (3.2
        refusals per request in overload, against 1.3-1.6)."""
        parked = self._parked.get(model)
        while parked and parked[0][3].done():
            heapq.heappop(parked)
        if not parked or not self._before_queue(parked[0][0]):
            return "", False
        if not self._admission.waiting:
            return parked[0][2], False
        self._admission.slots.take(node, model)
        return parked[0][2], True

    def _unkeep(self, waiter: str, model: str, wake: bool = True) -> None:
        """The slot kept for `waiter` (`_own_turn`) leaves the local table: its request takes
        it again at once, or (`wake`) it left and the local queue gets it."""
        node = self._kept.pop(waiter, None)
        if node is not None:
            self._admission.slots.give(node, model)
            if wake:
                self._admission.wake()

    def _own_turn(self, model: str, node: str, ours: bool = True, kept: bool = False) -> None:
        """A release left its slot of `node` free for this replica's own most urgent waiter of
        `model` (`ours`; or a grant found room left there): it goes to whichever is more urgent,
        the most urgent refused request (it asks again, for that node first) or the local queue
        (its next request asks Redis). `kept`: the local slot was kept for this answer
        (`_pass_on`): the parked request takes it, else it goes back to the local queue.
        Waking the local queue whenever it was not empty let later arrivals pass the parked
        requests for as long as the queue stayed busy."""
        state = self._nodes.get(node) if kept else None
        if ours:
            parked = self._parked.get(model)
            while parked and parked[0][3].done():
                heapq.heappop(parked)
            if parked and self._before_queue(parked[0][0]):
                _, _, waiter, future = heapq.heappop(parked)
                if state is not None:
                    self._kept[waiter] = state
                future.set_result(node)
                return
        if state is not None:
            self._admission.slots.give(state, model)
        self._admission.wake()

    def _before_queue(self, urgency: float) -> bool:
        """Whether a parked request of `urgency` (wall clock, `slots.acquire`) goes before the
        local queue's most urgent request."""
        first = self._admission.first_place()
        return first is None or urgency <= first + time.time() - time.monotonic()
