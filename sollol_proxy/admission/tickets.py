"""What a request holds in admission control: its place in the queue, then its slot.

A `Waiter` is a request waiting for a slot; once granted, a `Slot` holds one slot on one node
for the request until its last byte, moving with it when it is retried on another node. A
request that finds a slot free and nobody waiting gets its `Slot` at once, with no `Waiter`.
Nothing refers back from a slot to its waiter, so a request leaves no reference cycle behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from sollol_proxy.config import QueueBand
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.plan import Plan
from sollol_proxy.fleet.waiting import Hold


class Keeper(Protocol):
    """What a slot needs of admission control (the `Admission` that granted it)."""

    def is_free(self, node: NodeState, model: str) -> bool: ...
    def take(self, node: NodeState, model: str) -> None: ...
    def give(self, node: NodeState, model: str, slot: Slot | None = None) -> None: ...
    async def retry_elsewhere(self, slot: Slot, tried: frozenset[str]) -> NodeState | None: ...
    def wait_left(self, slot: Slot) -> float: ...


class QueueRejected(Exception):
    """The request cannot wait here; the message says why (sent as a 503)."""

    status = 503

    def __init__(self, message: str, reason: str, waited_s: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason  # bounded: full, shed, timeout
        self.waited_s = waited_s  # how long it waited before it was turned away


@dataclass(eq=False)
class Waiter:
    priority: int
    model: str
    key: tuple[str, ...]  # waiters with the same key have the same candidate nodes
    seq: int
    enqueued: float
    candidates: Callable[[], list[NodeState]]
    choose: Callable[[list[NodeState]], Plan]
    band: QueueBand | None
    future: asyncio.Future[Slot]
    slot: Slot | None = None  # a retry: the request's own slot, moved to the node granted
    hold: Hold | None = None  # it chose to wait for a busy slot of this node, until then
    queued: bool = False  # in the queue now (see waitqueue.py)

    def effective(self, now: float, ageing: float) -> float:
        return self.priority + (now - self.enqueued) / ageing

    def offered(self, free: list[NodeState], now: float) -> list[NodeState]:
        """The free nodes worth asking it about: none while it waits for a node not among them."""
        hold = self.hold
        if hold is None or now >= hold.until or any(n.name == hold.node for n in free):
            return free
        return []

    def granted(self, admission: Keeper, plan: Plan) -> Slot:
        return Slot(
            admission,
            plan,
            plan.targets[0].node,
            self.priority,
            self.model,
            self.key,
            self.enqueued,
            self.candidates,
            self.choose,
            self.band,
        )


class Slot:
    """The slot one request holds: on one node at a time, from admission to its last byte. It
    keeps how the request asked for a slot: a retry waits for one elsewhere the same way."""

    __slots__ = (
        "_admission",
        "band",
        "beside",
        "candidates",
        "choose",
        "enqueued",
        "key",
        "lease",
        "model",
        "node",
        "plan",
        "priority",
        "waited_s",
    )

    def __init__(
        self,
        admission: Keeper,
        plan: Plan,
        node: NodeState,
        priority: int,
        model: str,
        key: tuple[str, ...],
        enqueued: float,
        candidates: Callable[[], list[NodeState]],
        choose: Callable[[list[NodeState]], Plan],
        band: QueueBand | None,
    ) -> None:
        self._admission = admission
        self.priority = priority
        self.model = model
        self.key = key
        self.enqueued = enqueued  # when the request asked: its maximum wait counts from then
        self.candidates = candidates
        self.choose = choose
        self.band = band
        self.plan = plan
        self.node: NodeState | None = None
        self.waited_s = 0.0
        # Replicas sharing slots (shared/slots.py): the node, how many slots the other replicas
        # held there for the model when this one was granted, when it asked (monotonic), and
        # how many of those may have been waiting inside the node rather than running
        # (`shared.others.Others._unsure`).
        self.beside: tuple[str, int, float, int] = ("", 0, 0.0, 0)
        # The node where the gate holds a lease for this slot ("": none; a slot moved by a
        # failover or a retry carries none there), given back with the slot on that node only.
        self.lease = ""
        admission.take(node, model)
        self.node = node

    def beside_on(self, node: NodeState) -> tuple[int, float | None, int]:
        """How many slots the other replicas held on `node` when this one was granted there,
        when it asked for it, and how many of them may have been waiting ((0, None, 0): not
        known, or granted elsewhere)."""
        name, count, asked, unsure = self.beside
        return (count, asked, unsure) if self.node is node and name == node.name else (0, None, 0)

    def alternatives(self, tried: frozenset[str]) -> list[NodeState]:
        """The nodes a retry could wait for a slot on."""
        try:
            return [n for n in self.candidates() if n.name not in tried]
        except Exception:  # the candidates are gone (every node with the model is down)
            return []

    async def elsewhere(self, tried: frozenset[str]) -> NodeState | None:
        """For a retry when the next node has no free slot: give this slot back and wait, as
        urgent as when the request arrived, for one on a node not tried yet (None: none came
        within the request's maximum wait)."""
        return await self._admission.retry_elsewhere(self, tried)

    def wait_left(self) -> float:
        """Seconds left of the request's maximum wait (`elsewhere` waits no longer)."""
        return self._admission.wait_left(self)

    def hold(self, node: NodeState) -> bool:
        """Move the slot to `node` for a failover; False when `node` has no free slot."""
        if node is self.node:
            return True
        if not self._admission.is_free(node, self.model):
            return False
        # Taken before the old one is given back: giving back runs the pump, which could
        # otherwise hand this very slot to a waiting request.
        previous = self.node
        self._admission.take(node, self.model)
        self.node = node
        if previous is not None:
            self._admission.give(previous, self.model, self)
        return True

    def release(self) -> None:
        if self.node is not None:
            node, self.node = self.node, None
            self._admission.give(node, self.model, self)


class Held:
    """`async with admission.admit(...) as slot`: the slot is held for the block and given
    back after it, whatever ends it (a plain class: no generator per request)."""

    __slots__ = ("_acquiring", "_slot")

    def __init__(self, acquiring: Coroutine[Any, Any, Slot]) -> None:
        self._acquiring = acquiring
        self._slot: Slot | None = None

    async def __aenter__(self) -> Slot:
        self._slot = await self._acquiring
        return self._slot

    async def __aexit__(self, *exc_info: object) -> None:
        if self._slot is not None:
            self._slot.release()
