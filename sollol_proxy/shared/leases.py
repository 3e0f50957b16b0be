"""This replica's slot leases in Redis, written in order.

All of the replica's lease operations go through one ordered writer (`Leases.run`): grants and
releases that arrive together share one pipelined round trip, and a write-back after Redis comes
back (absolute counts, `lease_ops.build`) is ordered before them, so what Redis counts for this replica
is what it holds. Each lease is a count per replica in a hash per node and model; one renewal
per replica (`RENEW`, every third of `state.lease_ttl`: `keep`) keeps them all, and the waiters
it registered, so the slots of a killed replica are dropped by the next grant once its entry
has expired. While Redis does not answer, every operation is decided here alone (`ALONE`).

Slots a release handed to this replica wait in `handed.HandedSlots` (a mixin of this class)
until one of its requests takes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from sollol_proxy.shared.handed import HandedSlots
from sollol_proxy.shared.lease_ops import (
    ALONE,
    GRANTED,
    OPERATIONS,
    TAKEN,
    Ask,
    Bound,
    Enqueue,
    Forget,
    Grant,
    Handed,
    Heard,
    Op,
    Release,
    Take,
    build,
    carried,
    leave,
    renew,
)
from sollol_proxy.shared.link import Link

log = logging.getLogger("sollol.shared")

# Operations nobody waits for (a waiter's registration, a handed slot taken, a waiter leaving)
# go with the next round trip, or after this at the latest. At 20 ms, 0.7 trips per request
# carried nothing else in overload with three replicas (`bench replicas`); a registration this
# late lets a less urgent waiter of another replica be handed at most the slots freed meanwhile.
LAZY_S = 0.1


class Leases(HandedSlots):
    def __init__(
        self,
        link: Link,
        heard: Heard,
        handed: Handed,
        room: Callable[[str, str], Bound],
        own: Callable[[str, str, bool, bool], None],
        lost: Callable[[str], None],
    ) -> None:
        self._link = link
        self._room = room  # the capacity bound of a node and model
        self._heard = heard
        self._handed = handed
        # A slot of (model, node) left free for this replica's own waiters (or not, for a
        # release whose local slot was kept for the answer: `Release.kept`).
        self._own = own
        self._lost = lost  # a waiter Redis no longer counts (a lost hand-over): it asks again
        # The slots this replica holds per (node, model), as Redis should count them.
        self.mine: Counter[tuple[str, str]] = Counter()
        # Slots handed to this replica (counted in `mine`) that no request holds yet: the
        # waiters they were handed for, per node and model.
        self.reserved: dict[tuple[str, str], list[str]] = {}
        self._asking: set[str] = set()  # waiters whose grant is on its way (it takes theirs)
        self._taken: set[str] = set()  # waiters whose grant took theirs before it was heard of
        self.promised: dict[str, str] = {}  # a woken request -> the waiter whose slot it takes
        self.waiters: dict[str, str] = {}  # registered waiter -> model
        # Handed slots not taken yet -> the other replicas' slots beside them, and since when.
        self.beside: dict[str, tuple[int, float]] = {}
        self._direct: dict[str, None] = {}  # of those, handed by this replica's own release
        self._ops: list[Op] = []
        self._wake = asyncio.Event()
        self._lazy: asyncio.TimerHandle | None = None  # the lazy operations' deadline
        self._resync = True
        self.granted = self.refused = self.alone = self.handed = self.taken = self.returned = 0
        self.overbooked = 0  # handed slots taken twice (one over the bound until released)
        self.trips = 0  # round trips of the request path (grants, releases, registrations)
        # Operations sent to Redis, by kind (`lease_ops.OPERATIONS`): what the trips carried.
        self.operations: Counter[str] = Counter()
        # Round trips of the requests' path by what they carried (`lease_ops.carried`).
        self.trip_kinds: Counter[str] = Counter()
        # Told when Redis may have lost what this replica wrote (its write-back is due).
        self.on_rejoined: list[Callable[[], None]] = []
        link.on_rejoin.append(self.rejoined)

    async def grant(
        self, model: str, waiter: str, urgency: float, asks: list[Ask], again: bool = False
    ) -> tuple[int, int, str]:
        """Asks Redis for a lease on the first of the candidate nodes `asks` with room (see
        `lease_ops`): the verdict, the slots the other replicas held on the node granted (or
        the first choice) for the model then, less those handed to their waiters and not taken
        yet (0 when decided alone), and that node."""
        node = asks[0].node
        if not self._link.up:
            self.mine[(node, model)] += 1
            self.alone += 1
            return ALONE, 0, node
        future: asyncio.Future[tuple[int, int, str]] = asyncio.get_running_loop().create_future()
        self._push(Grant(model, waiter, urgency, asks, future, again))
        self._asking.add(waiter)
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled after its answer came (a client gone in the same turn): the lease was
            # counted as held, and the caller gives back only its local slot.
            if future.done() and not future.cancelled():
                verdict, _, granted = future.result()
                if verdict in (GRANTED, TAKEN, ALONE):
                    self.release(granted, model)
                else:  # refused: the grant registered it among the waiters
                    self.gone(waiter, model)
            raise
        finally:
            self._asking.discard(waiter)

    def enqueue(self, waiter: str, model: str, urgency: float) -> None:
        """A request about to wait takes its place among the model's waiters."""
        if self._link.up:
            self.waiters[waiter] = model
            self._push(Enqueue(waiter, model, urgency), lazy=LAZY_S)

    def release(
        self,
        node: str,
        model: str,
        reserve: str = "",
        parked: str = "",
        kept: bool = False,
        belief: str = "",
    ) -> None:
        """Gives a lease back (`reserve`: one handed for that waiter, never taken; `parked`:
        this replica's refused request Redis may hand it to; `kept`: its local slot is kept
        until the answer tells whose it is, `parking._pass_on`; `belief`: this replica's own,
        when it changed)."""
        if self._link.up:
            capacity, learn = self._room(node, model)
            self._push(Release(node, model, capacity, learn, reserve, parked, kept, belief))
        else:
            self.mine[(node, model)] -= 1

    def forget(self, waiter: str, model: str) -> None:
        if self.waiters.pop(waiter, None) is not None and self._link.up:
            self._push(Forget(waiter, model), lazy=LAZY_S)

    def gone(self, waiter: str, model: str) -> None:
        """A request left as its refused grant registered it (not yet in `waiters`)."""
        self.waiters.pop(waiter, None)
        if self._link.up:
            self._push(Forget(waiter, model), lazy=LAZY_S)

    def _push(self, op: Op, lazy: float = 0.0) -> None:
        """`lazy`: nobody waits for the answer: it goes with the next round trip, or after
        that many seconds at the latest (0: at once)."""
        self._ops.append(op)
        if not lazy:
            self._wake.set()
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + lazy
        if self._lazy is None or due < self._lazy.when():
            if self._lazy is not None:
                self._lazy.cancel()
            self._lazy = loop.call_at(due, self._wake.set)

    async def leave(self) -> None:
        """A replica that stops gives back at once what it still holds in Redis (its slots, its
        waiters, its entry among the living) instead of letting it lapse after the lease."""
        link = self._link
        await link.pipeline(lambda pipe: leave(pipe, link, self.mine, self.reserved, self.waiters))

    def rejoined(self) -> None:
        self._resync = True
        for hook in self.on_rejoined:
            hook()
        self._wake.set()

    async def run(self) -> None:
        """Background: sends this replica's lease operations, in order, batched."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._lazy is not None:
                self._lazy.cancel()
                self._lazy = None
            ops, self._ops = self._ops, []
            await self._flush(ops)

    async def keep(self) -> None:
        """Background: one renewal per replica for all its slots and waiters."""
        while True:
            await asyncio.sleep(self._link.policy.lease_ttl / 3)
            replies = await self._link.pipeline(lambda pipe: renew(pipe, self._link, self.waiters))
            if replies is None:
                continue
            if replies[0] == 0:
                log.warning("shared state: Redis had lost this replica's slots; writing them back")
                self.rejoined()
            for missing in replies[1:]:  # a lost hand-over: those parked ask again
                for waiter in missing:
                    self._lost(waiter.decode() if isinstance(waiter, bytes) else str(waiter))

    async def _flush(self, ops: list[Op]) -> None:
        link = self._link
        resync = self._resync and link.up
        dropped: list[tuple[str, str, str]] = []
        if resync:  # slots handed and not taken are not written back: they go with the outage
            for key, ids in self.reserved.items():
                self.mine[key] -= len(ids)
                dropped += [(*key, rid) for rid in ids]
            self.reserved.clear()
            self.beside.clear()
            self._direct.clear()
            self.promised.clear()
            self._taken.clear()
            # A handed slot taken and not yet told (`Take`, up to `handed.TAKE_S`) is in `mine`,
            # written back whole: only its hand entry goes (its take would count it twice).
            dropped += [(op.node, op.model, op.rid) for op in ops if isinstance(op, Take)]
            ops = [op for op in ops if not isinstance(op, Take)]
        held = {k: v for k, v in self.mine.items()} if resync else {}
        replies = None
        if link.up and (ops or resync):
            self.trips += 1
            self.trip_kinds[carried(ops)] += 1
            self.operations.update(OPERATIONS[type(op)] for op in ops)
            if resync:
                self.operations["write_back"] += 1
            try:
                replies = await link.pipeline(
                    lambda pipe: build(pipe, link, ops, resync, held, dropped)
                )
            except Exception:  # a bug here must not leave requests waiting for an answer
                log.exception("shared state: lease operations not sent; decided alone")
        if replies is None:
            if resync or ops:
                self._resync = True  # whatever reached Redis is rewritten when it is back
            for op in ops:
                self._alone(op)
            return
        if resync:
            self._resync = False
            replies = replies[len(held) + len(dropped) + 1 :]
        for op, reply in zip(ops, replies, strict=True):
            try:
                self._done(op, reply)
            except Exception:  # an answer not understood: this one is decided alone
                log.exception("shared state: unexpected answer %r; decided alone", reply)
                self._resync = True
                if not isinstance(op, Grant) or not op.future.done():
                    self._alone(op)

    def _alone(self, op: Op) -> None:
        """Redis did not take the operation: this replica decides alone."""
        if isinstance(op, Grant):
            self.mine[(op.node, op.model)] += 1
            self.alone += 1
            if op.future.cancelled():  # the request left meanwhile: its slot is not held
                self.mine[(op.node, op.model)] -= 1
            else:
                op.future.set_result((ALONE, 0, op.node))
        elif isinstance(op, Release):
            self.mine[(op.node, op.model)] -= 1
            if op.kept:  # nobody tells whose it is: the local queue's
                self._own(op.model, op.node, False, True)

    def _done(self, op: Op, reply: Any) -> None:
        if isinstance(op, Release):
            if int(reply[0]) == 0:
                # The slot handed for this replica's waiter was gone from Redis. Not taken by
                # the waiter's grant: a reserve is given back only once no grant of its waiter
                # is in flight and none took it (`_unclaimed`). So the hand-over expired, and
                # the expiry took the slot off this replica's count there: here too.
                self.mine[(op.node, op.model)] -= 1
                return
            key = (op.node, op.model)
            self.mine[key] -= 1
            given = [entry.decode().split("|") for entry in reply[3:]]
            # The local slot kept for the parked request goes with the slot Redis handed it;
            # else the answer tells whose it is.
            kept = op.kept and all(waiter != op.parked for waiter, _, _ in given)
            for waiter, held, hand in given:  # handed to this replica's own parked request
                mine = op.kept and waiter == op.parked
                self.handed_in(op.node, op.model, waiter, int(held), int(hand), mine, True)
            # What the others hold there and the belief all share, as a grant's answer tells.
            shared = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
            self._heard(op.node, op.model, max(int(reply[1]) - self.mine[key], 0), shared)
            if int(reply[0]) == 2 or kept:
                self._own(op.model, op.node, int(reply[0]) == 2, kept)
            return
        if isinstance(op, Take):
            if int(reply) == 0:  # its waiter's grant took it: this request's lease is counted anew
                self.overbooked += 1
                self.mine[(op.node, op.model)] += 1
            return
        if not isinstance(op, Grant):
            return
        verdict = int(reply[0])
        if verdict == ALONE:  # Redis does not know this replica: write back, then share
            self.rejoined()
            self._alone(op)
            return
        chosen = int(reply[1])
        node = op.asks[chosen - 1].node if chosen > 0 else op.node
        key = (node, op.model)
        if verdict in (GRANTED, TAKEN):
            if verdict == GRANTED:
                self.mine[key] += 1
            elif op.waiter in self.reserved.get(key, ()):  # handed to it, taken in Redis
                self._reserve_gone(key, op.waiter)
            else:  # handed to it, taken before the hand-over was heard of here
                self._taken.add(op.waiter)
            self.granted += 1
            if op.future.cancelled():
                self.release(node, op.model)
                return
            if verdict == GRANTED and int(reply[2]) > 0:
                self._own(
                    op.model, node, True, False
                )  # room left (slots of a dead replica came back): next one
        else:
            self.refused += 1
            if op.future.cancelled():  # the request left: registered by this refusal, it goes
                self.gone(op.waiter, op.model)
        # What each candidate looked at holds: until a release hands a slot here, a full one
        # is full for this replica.
        looked = op.asks[chosen - 1 : chosen] if verdict == TAKEN else op.asks
        others = 0
        for ask, index in zip(looked, range(4, len(reply), 2), strict=False):
            total, shared = int(reply[index]), reply[index + 1]
            held = max(total - self.mine[(ask.node, op.model)], 0)
            text = shared.decode() if isinstance(shared, bytes) else str(shared)
            self._heard(ask.node, op.model, held, text)
            if ask.node == node:
                others = held
        # Of those, the slots handed to other replicas' waiters are not running yet.
        running = others - int(reply[3])
        if not op.future.cancelled():
            op.future.set_result((verdict, max(running, 0), node))
