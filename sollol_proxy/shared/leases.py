"""This replica's slot leases in Redis, written in order.

All of the replica's lease operations go through one ordered writer (`Leases.run`): grants and
releases that arrive together share one pipelined round trip, and a write-back after Redis comes
back (absolute counts, `_build`) is ordered before them, so what Redis counts for this replica
is what it holds. Each lease is a count per replica in a hash per node and model; one renewal
per replica (`RENEW`, every third of `state.lease_ttl`: `keep`) keeps them all, and the waiters
it registered, so the slots of a killed replica are dropped by the next grant once its entry
has expired. While Redis does not answer, every operation is decided here alone (`ALONE`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.client import Pipeline

from sollol_proxy.shared.link import Link
from sollol_proxy.shared.scripts import SHA

log = logging.getLogger("sollol.shared")

GRANTED, REFUSED, ALONE = 1, 0, -1


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


Op = _Grant | _Release | _Forget
# Told what a grant's answer says of the other replicas: node, model, the slots they hold, and
# those promised to their more urgent waiters (0 when granted).
Heard = Callable[[str, str, int, int], None]


class Leases:
    def __init__(self, link: Link, heard: Heard, room_left: Callable[[str], None]) -> None:
        self._link = link
        self._heard = heard
        self._room_left = room_left  # a grant left a slot free for the model: wake a waiter
        # The slots this replica holds per (node, model), as Redis should count them.
        self.mine: Counter[tuple[str, str]] = Counter()
        self._held: Counter[tuple[str, str]] = Counter()  # local slots holding a lease
        self._unleased: Counter[tuple[str, str]] = Counter()  # gives that carry no lease
        self.waiters: dict[str, str] = {}  # registered waiter -> model
        self.saw_free: dict[str, bool] = {}  # refused waiters that saw a free slot
        self._ops: list[Op] = []
        self._wake = asyncio.Event()
        self._resync = True
        self.granted = self.refused = self.alone = 0
        link.on_rejoin.append(self.rejoined)

    async def grant(self, node: str, model: str, waiter: str, urgency: float, capacity: int) -> int:
        if not self._link.up:
            self.mine[(node, model)] += 1
            self._held[(node, model)] += 1
            self.alone += 1
            return ALONE
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._push(_Grant(node, model, waiter, urgency, capacity, future))
        return await future

    async def enqueue(self, waiter: str, model: str, urgency: float) -> None:
        """A request about to wait takes its place among the model's waiters."""
        ttl_ms = int(self._link.policy.lease_ttl * 1000)
        wait, wexp = self._link.key("wait", model), self._link.key("wexp", model)

        def build(pipe: Pipeline) -> None:
            pipe.evalsha(SHA["enqueue"], 2, wait, wexp, waiter, repr(urgency), ttl_ms)

        if await self._link.pipeline(build) is not None:
            self.waiters[waiter] = model

    def unleased(self, node: str, model: str) -> None:
        """The next give of this slot carries no lease (refused, or its grant was cancelled)."""
        self._unleased[(node, model)] += 1

    def give(self, node: str, model: str) -> None:
        """Admission control gave a slot back: its lease goes with it, in the same step, so
        that the next request granted the slot here finds it free in Redis too. A slot that
        never got a lease (refused, or moved to this node by a retry) gives none back."""
        key = (node, model)
        if self._unleased[key]:
            self._unleased[key] -= 1
        elif self._held[key]:
            self._held[key] -= 1
            self.release(node, model)

    def release(self, node: str, model: str) -> None:
        if self._link.up:
            self._push(_Release(node, model))
        else:
            self.mine[(node, model)] -= 1

    def forget(self, waiter: str, model: str) -> None:
        if self.waiters.pop(waiter, None) is not None and self._link.up:
            self._push(_Forget(waiter, model))

    def _push(self, op: Op) -> None:
        self._ops.append(op)
        self._wake.set()

    async def leave(self) -> None:
        """A replica that stops gives back at once what it still holds in Redis (its slots, its
        waiters, its entry among the living) instead of letting it lapse after the lease."""
        link = self._link

        def build(pipe: Pipeline) -> None:
            for node, model in self.mine:
                pipe.hdel(link.key("slots", f"{node}|{model}"), link.replica)
            for waiter, model in self.waiters.items():
                pipe.zrem(link.key("wait", model), waiter)
            pipe.zrem(link.key("alive"), link.replica)

        await link.pipeline(build)

    def rejoined(self) -> None:
        self._resync = True
        self._wake.set()

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
                self.rejoined()

    def _renew(self, pipe: Pipeline) -> None:
        link = self._link
        ttl_ms = int(link.policy.lease_ttl * 1000)
        pipe.evalsha(SHA["renew"], 1, link.key("alive"), link.replica, ttl_ms)
        waiters: dict[str, list[str]] = {}
        for waiter, model in self.waiters.items():
            waiters.setdefault(model, []).append(waiter)
        for model, ids in waiters.items():
            pipe.evalsha(SHA["keep_waiters"], 1, link.key("wexp", model), ttl_ms, *ids)

    async def _flush(self, ops: list[Op]) -> None:
        link = self._link
        resync = self._resync and link.up
        held = {k: v for k, v in self.mine.items()} if resync else {}
        replies = None
        if link.up and (ops or resync):
            try:
                replies = await link.pipeline(lambda pipe: self._build(pipe, ops, resync, held))
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
            replies = replies[len(held) + 1 :]
        for op, reply in zip(ops, replies, strict=True):
            try:
                self._done(op, reply)
            except Exception:  # an answer not understood: this one is decided alone
                log.exception("shared state: unexpected answer %r; decided alone", reply)
                self._resync = True
                if not isinstance(op, _Grant) or not op.future.done():
                    self._alone(op)

    def _build(
        self,
        pipe: Pipeline,
        ops: list[Op],
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
                self._held[(op.node, op.model)] += 1
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
            self.rejoined()
            self._alone(op)
            return
        key = (op.node, op.model)
        if verdict == GRANTED:
            self.mine[key] += 1
            self.granted += 1
            if op.future.cancelled():
                self.release(op.node, op.model)
                return
            self._held[key] += 1
            self._heard(op.node, op.model, max(total - self.mine[key], 0), 0)
            if total < op.capacity:  # room left: the next refused request may have it
                self._room_left(op.model)
        else:
            # Slots held elsewhere and those promised to more urgent waiters: until a release
            # is announced, the node is full for this replica.
            self.refused += 1
            self._heard(op.node, op.model, max(total - self.mine[key], 0), int(reply[2]))
            if total < op.capacity:  # free, but promised to more urgent requests
                self.saw_free[op.waiter] = True
        if not op.future.cancelled():
            op.future.set_result(verdict)
