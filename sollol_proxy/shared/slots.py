"""Slot leases and the order of waiting requests, shared by every replica through Redis.

A request first gets a slot from this replica's admission control as always (local queue,
priority, late binding); then one script in Redis (`scripts.GRANT`) grants the lease only if
the slots all replicas hold on that node for that model, plus the waiters of the model more
urgent than this request at any replica, stay under the capacity belief (`model_room`: the
learned slots plus the probe margin). Refused, the request gives its local slot back, is
registered among the model's waiters (by urgency: arrival minus priority times `queue.ageing`,
so ageing orders replicas as it orders one queue), and waits for a release to be announced.
A request about to wait registers first, so that a freed slot goes to the most urgent request
of any replica.

All of this replica's lease operations go through one ordered writer: grants and releases
that arrive together share one pipelined round trip, and a write-back after Redis comes back
is ordered before them. Each lease is a count per replica in a hash per node and model;
one renewal per replica (`RENEW`, every third of `state.lease_ttl`) keeps them all, so the
slots of a killed replica are dropped by the next grant once its lease expires.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.client import Pipeline

from sollol_proxy.admission.admission import Admission
from sollol_proxy.admission.gate import LocalAdmit
from sollol_proxy.admission.tickets import Held, QueueRejected, Slot
from sollol_proxy.fleet.capacity import model_room
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.shared.link import Link
from sollol_proxy.shared.scripts import SHA

log = logging.getLogger("sollol.shared")

GRANTED, REFUSED, ALONE = 1, 0, -1
# How long what another replica holds on a node, as last heard, is trusted; past it the
# grant script, which always knows, decides.
FRESH_S = 1.0
# A refused request asks again at the next announced release of its model, or after this.
RECHECK_S = 0.25


@dataclass(eq=False)
class _Grant:
    node: str
    model: str
    waiter: str
    urgency: float
    capacity: int
    future: asyncio.Future[int] = field(repr=False)


@dataclass(eq=False)
class _Release:
    node: str
    model: str


@dataclass(eq=False)
class _Forget:
    waiter: str
    model: str


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
        # The slots this replica holds per (node, model), as Redis should count them.
        self.mine: Counter[tuple[str, str]] = Counter()
        self._remote: dict[tuple[str, str], tuple[int, float]] = {}  # others' slots, when heard
        self._ops: list[_Grant | _Release | _Forget] = []
        self._wake = asyncio.Event()
        self._resync = True
        self._waiters: dict[str, str] = {}  # registered waiter -> model
        # Refused requests, per model, most urgent first: (urgency, seq, woken when).
        self._parked: dict[str, list[tuple[float, int, asyncio.Future[None]]]] = {}
        self._seq = itertools.count()
        self._leases: Counter[tuple[str, str]] = Counter()  # local slots holding a lease
        self._unleased: Counter[tuple[str, str]] = Counter()  # gives that carry no lease
        self._remote_free: dict[str, bool] = {}  # refused waiters that saw a free slot
        self.granted = self.refused = self.alone = 0
        link.on_rejoin.append(self._rejoined)
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
                await self._enqueue(waiter, model, urgency)
            while True:
                held = local(free, again)
                slot = await held.__aenter__()
                node = slot.node
                assert node is not None
                try:
                    verdict = await self._grant(node, model, waiter, urgency)
                except BaseException:
                    self._unleased[(node.name, model)] += 1
                    await held.__aexit__(None, None, None)
                    raise
                if verdict != REFUSED:
                    if verdict == ALONE and waiter in self._waiters:
                        self._forget(waiter, model)
                    self._waiters.pop(waiter, None)
                    slot.waited_s = time.monotonic() - asked
                    return slot, held
                self._waiters[waiter] = model
                again = asked
                self._unleased[(node.name, model)] += 1
                await held.__aexit__(None, None, None)
                ahead_only = self._remote_free.pop(waiter, False)
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
            if self._waiters.pop(waiter, None) is not None:
                self._forget(waiter, model)
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

    async def _enqueue(self, waiter: str, model: str, urgency: float) -> None:
        ttl_ms = int(self._link.policy.lease_ttl * 1000)
        wait, wexp = self._link.key("wait", model), self._link.key("wexp", model)

        def build(pipe: Pipeline) -> None:
            pipe.evalsha(SHA["enqueue"], 2, wait, wexp, waiter, repr(urgency), ttl_ms)

        if await self._link.pipeline(build) is not None:
            self._waiters[waiter] = model

    async def _grant(self, node: NodeState, model: str, waiter: str, urgency: float) -> int:
        if not self._link.up:
            self.mine[(node.name, model)] += 1
            self._leases[(node.name, model)] += 1
            self.alone += 1
            return ALONE
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._push(_Grant(node.name, model, waiter, urgency, model_room(node, model), future))
        return await future

    def give(self, node: NodeState, model: str) -> None:
        """Admission control gave a slot back: its lease goes with it, in the same step, so
        that the next request granted the slot here finds it free in Redis too. A slot that
        never got a lease (refused, or moved to this node by a retry) gives none back."""
        key = (node.name, model)
        if self._unleased[key]:
            self._unleased[key] -= 1
        elif self._leases[key]:
            self._leases[key] -= 1
            self.release(node.name, model)

    def release(self, node: str, model: str) -> None:
        if self._link.up:
            self._push(_Release(node, model))
        else:
            self.mine[(node, model)] -= 1

    def _forget(self, waiter: str, model: str) -> None:
        if self._link.up:
            self._push(_Forget(waiter, model))

    def _push(self, op: _Grant | _Release | _Forget) -> None:
        self._ops.append(op)
        self._wake.set()

    # -- events ---------------------------------------------------------------------------------

    def _rejoined(self) -> None:
        self._resync = True
        self._wake.set()

    def _freed(self, event: dict[str, Any]) -> None:
        node, model, total = event.get("node"), event.get("model"), event.get("total")
        if not isinstance(node, str) or not isinstance(model, str) or not isinstance(total, int):
            return
        self._remote[(node, model)] = (max(total - self.mine[(node, model)], 0), time.monotonic())
        self._unpark(model)
        self._admission.wake()

    # -- the writer -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Background: sends this replica's lease operations, in order, batched."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            ops, self._ops = self._ops, []
            await self._flush(ops)

    async def keep(self) -> None:
        """Background: one renewal per replica for all its slots and waiters."""
        while True:
            await asyncio.sleep(self._link.policy.lease_ttl / 3)
            replies = await self._link.pipeline(self._renew)
            if replies is not None and replies[0] == 0:
                log.warning("shared state: Redis had lost this replica's slots; writing them back")
                self._rejoined()

    def _renew(self, pipe: Pipeline) -> None:
        link = self._link
        ttl_ms = int(link.policy.lease_ttl * 1000)
        pipe.evalsha(SHA["renew"], 1, link.key("alive"), link.replica, ttl_ms)
        waiters: dict[str, list[str]] = {}
        for waiter, model in self._waiters.items():
            waiters.setdefault(model, []).append(waiter)
        for model, ids in waiters.items():
            pipe.evalsha(SHA["keep_waiters"], 1, link.key("wexp", model), ttl_ms, *ids)

    async def _flush(self, ops: list[_Grant | _Release | _Forget]) -> None:
        link = self._link
        resync = self._resync and link.up
        held = {k: v for k, v in self.mine.items()} if resync else {}
        replies = None
        if link.up and (ops or resync):
            replies = await link.pipeline(lambda pipe: self._build(pipe, ops, resync, held))
        if replies is None:
            if resync or ops:
                self._resync = True  # whatever reached Redis is rewritten when it is back
            for op in ops:
                self._alone(op)
            return
        if resync:
            self._resync = False
            replies = replies[len(held) + 1 :]
        for op, reply in zip(ops, replies, strict=True):
            self._done(op, reply)

    def _build(
        self,
        pipe: Pipeline,
        ops: list[_Grant | _Release | _Forget],
        resync: bool,
        held: dict[tuple[str, str], int],
    ) -> None:
        link = self._link
        ttl_ms = int(link.policy.lease_ttl * 1000)
        if resync:
            pipe.evalsha(SHA["renew"], 1, link.key("alive"), link.replica, ttl_ms)
            for (node, model), count in held.items():
                key = link.key("slots", f"{node}|{model}")
                if count > 0:
                    pipe.hset(key, link.replica, count)
                else:
                    pipe.hdel(key, link.replica)
        for op in ops:
            if isinstance(op, _Grant):
                pipe.evalsha(
                    SHA["grant"],
                    4,
                    link.key("slots", f"{op.node}|{op.model}"),
                    link.key("alive"),
                    link.key("wait", op.model),
                    link.key("wexp", op.model),
                    link.replica,
                    op.capacity,
                    op.waiter,
                    repr(op.urgency),
                    ttl_ms,
                )
            elif isinstance(op, _Release):
                pipe.evalsha(
                    SHA["release"],
                    3,
                    link.key("slots", f"{op.node}|{op.model}"),
                    link.key("wait", op.model),
                    link.key("wexp", op.model),
                    link.replica,
                    link.channel,
                    op.node,
                    op.model,
                )
            else:  # its expiry entry goes at the next grant's clean-up
                pipe.zrem(link.key("wait", op.model), op.waiter)

    def _alone(self, op: _Grant | _Release | _Forget) -> None:
        """Redis did not take the operation: this replica decides alone."""
        if isinstance(op, _Grant):
            self.mine[(op.node, op.model)] += 1
            self.alone += 1
            if op.future.cancelled():  # the request left meanwhile: its slot is not held
                self.mine[(op.node, op.model)] -= 1
            else:
                self._leases[(op.node, op.model)] += 1
                op.future.set_result(ALONE)
        elif isinstance(op, _Release):
            self.mine[(op.node, op.model)] -= 1

    def _done(self, op: _Grant | _Release | _Forget, reply: Any) -> None:
        if isinstance(op, _Release):
            self.mine[(op.node, op.model)] -= 1
            return
        if not isinstance(op, _Grant):
            return
        verdict, total = int(reply[0]), int(reply[1])
        if verdict == ALONE:  # Redis does not know this replica: write back, then share
            self._rejoined()
            self._alone(op)
            return
        key = (op.node, op.model)
        if verdict == GRANTED:
            self.mine[key] += 1
            self.granted += 1
            if op.future.cancelled():
                self.release(op.node, op.model)
                return
            self._leases[key] += 1
            self._remote[key] = (max(total - self.mine[key], 0), time.monotonic())
            if total < op.capacity:  # room left: the next refused request may have it
                self._unpark(op.model)
        else:
            # Slots held elsewhere and those promised to more urgent waiters: until a release
            # is announced, the node is full for this replica.
            self.refused += 1
            self._remote[key] = (max(total - self.mine[key], 0) + int(reply[2]), time.monotonic())
            if total < op.capacity:  # free, but promised to more urgent requests
                self._remote_free[op.waiter] = True
        if not op.future.cancelled():
            op.future.set_result(verdict)
