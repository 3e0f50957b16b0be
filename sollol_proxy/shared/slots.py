"""The admission gate of replicas sharing slots and the order of waiting requests in Redis.

A request first gets a slot from this replica's admission control as always (local queue,
priority, late binding, holds); then one script in Redis (`scripts.GRANT`, through the ordered
writer of `leases.py`) grants the lease only if the slots all replicas hold on that node for
that model stay under the bound (the configured slots, or the learned belief all replicas share
plus one probe: `others.Others._capacity`); the same call asks for up to MORE_ASKED other candidate nodes when
that one is full (`_asks`; the local slot then moves, `_move`). Refused on all, the request
gives its local slot back, is registered among the model's waiters by that same call (by
urgency: arrival minus priority times `queue.ageing`, so ageing orders replicas as it orders
one queue), and waits (`parking.py`) until a release hands it a slot inside its script
(`_handed`): it then takes that slot at once,
ahead of the local queue, with no round trip. A request about to wait in the local queue
registers first (lazily), so that a freed slot goes to the most urgent request of any replica.
What the other replicas hold on each node, as last heard, steers the choice of node (`others.py`);
Redis always decides.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

from sollol_proxy.admission.admission import Admission
from sollol_proxy.admission.gate import LocalAdmit, NotPlaced
from sollol_proxy.admission.tickets import Held, QueueRejected, Slot
from sollol_proxy.fleet.capacity import model_room
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.shared.held import SharedHeld
from sollol_proxy.shared.lease_ops import ALONE, BEHIND, REFUSED, Ask
from sollol_proxy.shared.leases import Leases
from sollol_proxy.shared.link import Link
from sollol_proxy.shared.others import Others
from sollol_proxy.shared.parking import Parking

# A grant asks for the local choice and, if it is full, up to this many other candidate nodes
# in the same round trip.
MORE_ASKED = 3


class SharedSlots(Parking, Others):
    def __init__(self, link: Link, admission: Admission) -> None:
        self._link = link
        self._admission = admission
        self.leases = Leases(
            link, self._heard, self._handed, self._capacity, self._own_turn, self._ask_again
        )
        self._remote: dict[tuple[str, str], tuple[int, float]] = {}  # others' slots, when heard
        # Refused requests waiting for a slot (parking.Parking).
        self._parked: dict[str, list[tuple[float, int, str, asyncio.Future[str | None]]]] = {}
        self._waiting: dict[str, asyncio.Future[str | None]] = {}
        self._live: set[str] = set()  # waiters of requests still asking for a slot here
        self._timers: dict[str, asyncio.Timeout] = {}
        self._kept: dict[str, NodeState] = {}  # parked waiter -> node of the slot kept for it
        self._nodes: dict[str, NodeState] = {}  # the nodes this replica's requests went to
        self._told: dict[tuple[str, str], str] = {}  # this replica's own belief, as told to Redis
        # Redis lost this replica's entries (restarted, or its lease lapsed): its beliefs went
        # with them, and are told again with the next grants and releases.
        self.leases.on_rejoined.append(self._told.clear)
        self._shared: dict[tuple[str, str], int] = {}  # the replicas' shared one, as last heard
        self._seq = itertools.count()
        link.handlers["handed"] = self._heard_handed
        link.handlers["ended"] = self._heard_ended
        link.on_down.append(self._unpark)
        link.on_rejoin.append(self._unpark)
        admission.gate = self

    # -- the admission gate -------------------------------------------------------------------

    def admit(
        self,
        local: LocalAdmit,
        priority: int,
        model: str,
        candidates: Callable[[], list[NodeState]],
    ) -> SharedHeld:
        return SharedHeld(self.acquire, local, priority, model, candidates)

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
        handed: str | None = None  # the node whose slot a release handed to this request

        tried: set[str] = set()  # nodes Redis found full for it since it last waited
        grants = 0  # the grants it sent
        # Nodes whose handed slot it could not take (its plan holds it for another node).
        declined: set[str] = set()

        def free() -> list[NodeState]:
            # The nodes other replicas, as last heard, leave room on; all of them when none
            # does: then Redis decides, and a refused request waits in `_park`, in order.
            nodes = candidates()
            return [n for n in nodes if n.name not in tried and self._room(n, model)] or nodes

        def there() -> list[NodeState]:
            return [n for n in candidates() if n.name == handed] or free()

        self._live.add(waiter)
        try:
            if self._link.up and self._parked_for(model):
                # Refused requests of this replica wait already: Redis is full for the model,
                # as last heard. It takes its place behind them (its registration rides the
                # next trip), rather than ask with a grant that is refused, or that takes the
                # slot a release is freeing for them at the same moment.
                self.leases.enqueue(waiter, model, urgency)
                again = asked
                handed = await self._park(model, urgency, waiter, deadline, declined)
                kept = self._kept.get(waiter)
                handed = kept.name if kept is not None else handed
            elif self._link.up and self._will_wait(free, model):
                # It will wait in the local queue: it takes its place in the shared order first.
                self.leases.enqueue(waiter, model, urgency)
            while True:
                # A request handed a slot takes it at once, ahead of this replica's own queue:
                # Redis chose it as the most urgent, or this replica as its most urgent parked
                # (a slot kept for it in the local table: given back here, taken again below).
                self._unkeep(waiter, model, wake=False)
                held = local(free if handed is None else there, again, handed is not None)
                try:
                    slot = await held.__aenter__()
                except NotPlaced:  # that node is no longer its choice: it asks as any other
                    # Nor is the slot handed there: the local queue may take it, and this
                    # request is not offered it again when it parks (`unclaimed`): each offer
                    # was a grant refused and another wait, 4-5 per request in overload.
                    if handed is not None:
                        declined.add(handed)
                    self.leases.promised.pop(waiter, None)
                    self._admission.wake()
                    handed = None
                    continue
                node = slot.node
                assert node is not None
                self._nodes[node.name] = node
                taken = self.leases.take(node.name, model, waiter)
                if taken is not None:
                    slot.waited_s = time.monotonic() - asked
                    beside, since = taken
                    unsure = self._unsure(node.name, model, beside)
                    slot.beside = (node.name, beside, since, unsure)
                    slot.lease = node.name
                    return slot, held
                # Handed a slot it could not take (taken meanwhile): it waits for the next one
                # rather than for that one again.
                claim = handed is None
                sent = time.monotonic()
                asks = self._asks(slot, candidates, tried, model)
                try:
                    grants += 1
                    verdict, others, granted = await self.leases.grant(
                        model, waiter, urgency, asks, grants > 1
                    )
                except BaseException:
                    await held.__aexit__(None, None, None)  # its slot carries no lease
                    raise
                if granted != node.name:
                    # Granted on another candidate (its first choice was full): the local slot
                    # moves there, past the local queue (the lease is held for it).
                    await held.__aexit__(None, None, None)
                    moved = await self._move(local, candidates, granted, model, asked)
                    if moved is None:  # gone from the candidates meanwhile: its lease too
                        continue
                    held, slot = moved
                    node = slot.node
                    assert node is not None
                if verdict not in (REFUSED, BEHIND):
                    if verdict == ALONE:
                        self.leases.forget(waiter, model)
                    self.leases.waiters.pop(waiter, None)
                    slot.waited_s = time.monotonic() - asked
                    # Beside this replica's own requests there, the other replicas' ran too,
                    # less those heard to end since it asked: a run without a slot wait
                    # proves them all (fleet/beliefs.py) but those that may have been waiting.
                    unsure = self._unsure(node.name, model, others)
                    slot.beside = (node.name, others, sent, unsure)
                    slot.lease = node.name
                    return slot, held
                self.leases.waiters[waiter] = model
                again = asked
                await held.__aexit__(None, None, None)
                tried.update(ask.node for ask in asks)
                if verdict == REFUSED and self._room_elsewhere(candidates, tried, model):
                    handed = None
                    continue
                if time.monotonic() >= deadline:
                    raise QueueRejected(
                        f"sollol-proxy: no free slot for model '{model}' within "
                        f"{self._admission.config.max_wait:g}s (priority {priority}); the "
                        "fleet is at capacity",
                        "timeout",
                        self._admission.config.max_wait,
                    )
                handed = await self._park(
                    model, urgency, waiter, deadline, declined if claim else None
                )
                kept = self._kept.get(waiter)
                if kept is not None:  # kept for it as it stopped waiting (its time was up)
                    handed = kept.name
                tried.clear()
        except BaseException:
            self._unkeep(waiter, model)
            self.leases.forget(waiter, model)
            raise
        finally:
            self._live.discard(waiter)

    def _asks(
        self,
        slot: Slot,
        candidates: Callable[[], list[NodeState]],
        tried: set[str],
        model: str,
    ) -> list[Ask]:
        """The nodes a grant may take a slot on, in order: the local admission's choice, then
        up to MORE_ASKED other candidates that the other replicas, as last heard, leave room on
        (the local choice's plan's failover order first)."""
        first = slot.node
        assert first is not None
        asks = [self._ask(first, model)]
        try:
            nodes = candidates()
        except Exception:  # no candidates left: the local choice alone
            return asks
        rank = {t.node.name: i for i, t in enumerate(slot.plan.targets)}
        for n in sorted(nodes, key=lambda n: rank.get(n.name, len(rank))):
            if len(asks) > MORE_ASKED:
                break
            if n.name != first.name and n.name not in tried and n.healthy and self._room(n, model):
                self._nodes[n.name] = n
                asks.append(self._ask(n, model))
        return asks

    def _ask(self, node: NodeState, model: str) -> Ask:
        capacity, learn = self._capacity(node.name, model)
        return Ask(node.name, capacity, learn, self._tell(node, model))

    async def _move(
        self,
        local: LocalAdmit,
        candidates: Callable[[], list[NodeState]],
        granted: str,
        model: str,
        asked: float,
    ) -> tuple[Held, Slot] | None:
        """The local slot of a request whose lease was granted on `granted`: taken there at
        once, never queued (the lease is held for it: a slot held by a request that does not
        run); its lease goes back with the slot. None when it cannot take it at once (the node
        left the candidates, or its plan would hold it for another node): the lease goes back."""
        held = local(lambda: [n for n in candidates() if n.name == granted], asked, True)
        try:
            slot = await held.__aenter__()
        except NotPlaced:
            self.leases.release(granted, model)
            return None
        except BaseException:
            self.leases.release(granted, model)
            raise
        return held, slot

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
        self, candidates: Callable[[], list[NodeState]], tried: set[str], model: str
    ) -> bool:
        """Refused because the nodes `tried` are full: another node may still have room."""
        try:
            return any(n.name not in tried and self._room(n, model) for n in candidates())
        except Exception:  # no candidates left: the next local admission answers that
            return False

    def reserved(self, node: NodeState, model: str) -> bool:
        promised = set(self.leases.promised.values())
        ids = self.leases.reserved.get((node.name, model), ())
        handed = sum(rid not in promised for rid in ids)
        # Each handed slot nobody was promised lets one more request of the local queue in here
        # (until it takes it), not every one.
        return (
            handed > 0
            and self._admission.slots.in_use(node.name).get(model, 0)
            < model_room(node, model) + handed
        )

    def give(self, node: NodeState, model: str, slot: Slot) -> None:
        """A slot given back on `node`: its lease there goes with it, in the same step, so that
        the next request granted the slot here finds it free in Redis too (a slot refused its
        lease, or moved there by a failover or a retry, carries none: `Slot.lease`)."""
        if slot.lease != node.name:
            return
        slot.lease = ""
        self._nodes[node.name] = node
        if not self._link.up:
            self.leases.release(node.name, model)
            return
        parked, kept = self._pass_on(node, model)
        belief = self._tell(node, model)
        self.leases.release(node.name, model, parked=parked, kept=kept, belief=belief)

    def _heard_handed(self, event: dict[str, Any]) -> None:
        node, model, waiter = event.get("node"), event.get("model"), event.get("waiter")
        if event.get("to") != self._link.replica:
            return
        if not isinstance(node, str) or not isinstance(model, str) or not isinstance(waiter, str):
            return
        held, hand = event.get("held"), event.get("hand")
        counts = (held, hand) if isinstance(held, int) and isinstance(hand, int) else (0, 0)
        self.leases.handed_in(node, model, waiter, *counts)
