"""The lease operations of one replica (`leases.py`), and how a batch of them is written to Redis
as one pipeline (`build`): the scripts of `scripts.py`, with their keys.

Grants (for each candidate node, `Ask`) and releases carry the capacity bound: the node's configured slots (`learn` false), or,
learned, the belief every replica shares in Redis (`belief:<node>|<model>`; the asker's own
until one is shared) plus one probe margin: however many replicas probe, together they run at
most one request more than believed. A grant or a release also carries the asker's own belief
when it changed since it last told Redis (else ""): the latest belief learned by any replica is
everyone's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from redis.asyncio.client import Pipeline

from sollol_proxy.shared.link import Link
from sollol_proxy.shared.scripts import SHA

# A grant's verdicts (`scripts.GRANT`; ALONE: decided here, Redis not answering).
GRANTED, REFUSED, ALONE, TAKEN, BEHIND = 1, 0, -1, 2, 3


# Told what a grant's answer says: node, model, the slots the other replicas hold, and the slots
# all replicas believe the node has ("" when they are not learned).
Heard = Callable[[str, str, int, str], None]
# The capacity a node and model are asked with, and whether it is learned (see `lease_ops`).
Bound = tuple[int, bool]
# Told that a slot of node, model was handed to this replica for its waiter, and whether the
# local slot of that node was kept for that waiter (`Release.kept`).
Handed = Callable[[str, str, str, bool], None]


@dataclass(frozen=True)
class Ask:
    """One candidate node of a grant: its bound (`capacity`, and whether it is `learn`ed: the
    bound is then the shared belief, not `capacity`) and the asker's own belief when it changed
    since it last told Redis (else "")."""

    node: str
    capacity: int
    learn: bool
    belief: str


@dataclass(eq=False)
class Grant:
    model: str
    waiter: str
    urgency: float
    asks: list[Ask]  # the candidate nodes, the asker's first choice first
    # The verdict, the slots the other replicas hold on the node granted (or the first choice)
    # for the model, and that node.
    future: asyncio.Future[tuple[int, int, str]] = field(repr=False)
    again: bool = False  # not the request's first grant (it was refused, or parked, before)

    @property
    def node(self) -> str:
        """The asker's first choice (where it holds its local slot)."""
        return self.asks[0].node


@dataclass(eq=False)
class Release:
    node: str
    model: str
    capacity: int
    learn: bool
    reserve: str = ""  # a slot handed for this waiter that nobody took
    # This replica's most urgent refused request, if it goes before the local queue: Redis hands
    # it the slot in its turn (`scripts.RELEASE`).
    parked: str = ""
    kept: bool = False  # its local slot is kept for `parked` (or for whichever Redis leaves it)
    belief: str = ""  # the releaser's own belief when it changed (as `Ask.belief`)


@dataclass(eq=False)
class Take:
    node: str
    model: str
    rid: str  # the waiter it was handed for


@dataclass(eq=False)
class Enqueue:
    waiter: str
    model: str
    urgency: float


@dataclass(eq=False)
class Forget:
    waiter: str
    model: str


Op = Grant | Release | Take | Enqueue | Forget
# Each operation's name in `sollol_shared_lease_operations_total{operation}`; a write-back after
# Redis came back is `write_back`.
OPERATIONS: dict[type, str] = {
    Grant: "grant",
    Release: "release",
    Take: "take",
    Enqueue: "enqueue",
    Forget: "forget",
}


def carried(ops: list[Op]) -> str:
    """What one round trip carried, for `sollol_shared_request_round_trips_by_kind_total`: the
    kinds of its operations, sorted and joined by "+", a request's repeated grant counted as
    `regrant` and a handed slot nobody took given back as `return` (where the trips beyond one
    in and one out per request come from)."""
    kinds = set()
    for op in ops:
        if isinstance(op, Grant) and op.again:
            kinds.add("regrant")
        elif isinstance(op, Release) and op.reserve:
            kinds.add("return")
        else:
            kinds.add(OPERATIONS[type(op)])
    return "+".join(sorted(kinds)) or "write_back"


def build(
    pipe: Pipeline,
    link: Link,
    ops: list[Op],
    resync: bool,
    held: dict[tuple[str, str], int],
    dropped: list[tuple[str, str, str]],
) -> None:
    """One pipeline: the write-back of what this replica holds (after Redis came back: its
    slots, and the handed slots it no longer counts as reserved, `dropped`), then the operations
    in order."""
    ttl_ms = int(link.policy.lease_ttl * 1000)
    if resync:
        pipe.evalsha(SHA["renew"], 1, link.key("alive"), link.replica, ttl_ms)
        for node, model, rid in dropped:
            pipe.hdel(link.key("hand", f"{node}|{model}"), rid)
        for (node, model), count in held.items():
            key = link.key("slots", f"{node}|{model}")
            if count > 0:
                pipe.hset(key, link.replica, count)
            else:
                pipe.hdel(key, link.replica)
    for op in ops:
        if isinstance(op, Grant):
            keys = [link.key("alive"), link.key("wait", op.model), link.key("wexp", op.model)]
            args: list[object] = [
                link.replica,
                op.waiter,
                repr(op.urgency),
                ttl_ms,
                link.channel,
                op.model,
            ]
            for ask in op.asks:
                pair = f"{ask.node}|{op.model}"
                keys += [link.key("slots", pair), link.key("hand", pair), link.key("belief", pair)]
                args += [ask.node, ask.capacity, int(ask.learn), ask.belief]
            pipe.evalsha(SHA["grant"], len(keys), *keys, *args)
        elif isinstance(op, Release):
            pair = f"{op.node}|{op.model}"
            keys = [
                link.key("slots", pair),
                link.key("alive"),
                link.key("wait", op.model),
                link.key("wexp", op.model),
                link.key("hand", pair),
                link.key("belief", pair),
            ]
            pipe.evalsha(
                SHA["release"],
                len(keys),
                *keys,
                link.replica,
                link.channel,
                op.node,
                op.model,
                op.capacity,
                op.reserve,
                int(op.learn),
                op.parked,
                op.belief,
            )
        elif isinstance(op, Take):
            pair = f"{op.node}|{op.model}"
            pipe.evalsha(
                SHA["take"],
                2,
                link.key("hand", pair),
                link.key("slots", pair),
                link.replica,
                op.rid,
            )
        elif isinstance(op, Enqueue):
            wait, wexp = link.key("wait", op.model), link.key("wexp", op.model)
            pipe.evalsha(SHA["enqueue"], 2, wait, wexp, op.waiter, repr(op.urgency), ttl_ms)
        else:  # its expiry entry goes at the next grant's clean-up
            pipe.zrem(link.key("wait", op.model), op.waiter)


def renew(pipe: Pipeline, link: Link, waiters: dict[str, str]) -> None:
    """One renewal of this replica's entry among the living (so of all its leases) and of the
    waiters it registered (waiter -> model); each model's answer lists those Redis no longer
    counts among the waiters."""
    ttl_ms = int(link.policy.lease_ttl * 1000)
    pipe.evalsha(SHA["renew"], 1, link.key("alive"), link.replica, ttl_ms)
    by_model: dict[str, list[str]] = {}
    for waiter, model in waiters.items():
        by_model.setdefault(model, []).append(waiter)
    for model, ids in by_model.items():
        wexp, wait = link.key("wexp", model), link.key("wait", model)
        pipe.evalsha(SHA["keep_waiters"], 2, wexp, wait, ttl_ms, *ids)


def leave(
    pipe: Pipeline,
    link: Link,
    mine: Mapping[tuple[str, str], int],
    reserved: Mapping[tuple[str, str], list[str]],
    waiters: Mapping[str, str],
) -> None:
    """Everything a stopping replica holds in Redis, given back at once: its slots, the slots
    handed to it, its waiters and its entry among the living."""
    for node, model in mine:
        pipe.hdel(link.key("slots", f"{node}|{model}"), link.replica)
    for (node, model), ids in reserved.items():
        if ids:
            pipe.hdel(link.key("hand", f"{node}|{model}"), *ids)
    for waiter, model in waiters.items():
        pipe.zrem(link.key("wait", model), waiter)
    pipe.zrem(link.key("alive"), link.replica)
