"""Admission control: the proxy holds the requests the fleet cannot start yet, most urgent first.

Ollama queues requests for a loaded model FIFO and without limit (reference 5.2), so a priority
means nothing once a request reaches a node. The proxy therefore sends a model request to a node
only while that node has a free slot for the model, and keeps the excess here:

- a slot is free for model M on node N while the proxy runs fewer than M's slots there (see
  `slot_table.py`), and, when M is not running there yet, while fewer than `max_loaded_models` other
  models are running there and M fits in the node's configured `vram` beside them (otherwise
  Ollama would have to wait for a busy model to unload);
- waiting requests are served by effective priority (priority plus one level per `ageing`
  seconds waited), oldest first among equals (`waitqueue.py`: one heap whose order does not
  change as they age);
- the node is chosen when the request leaves the queue (late binding), by the routing engine,
  among the nodes free at that moment; the engine may answer that the request had better wait
  a little for a busy slot holding its prompt (`Plan.hold`), and it is asked again when that
  node has a free slot or the wait's deadline passes;
- when a slot frees, a waiting request whose model is loaded on a free node goes first, if its
  effective priority is within `affinity_window` of the most urgent one (no model swap for it:
  `pump.py`);
- bounds: a queue length (the least urgent waiter is shed for a more urgent newcomer) and a
  maximum wait, both also per priority band; beyond them the client gets a 503 saying why.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from sollol_proxy.admission.bounds import over_bounds, timed_out
from sollol_proxy.admission.gate import Gate, NotPlaced
from sollol_proxy.admission.pump import pump
from sollol_proxy.admission.queue_stats import PriorityStats, next_waiters, queue_snapshot
from sollol_proxy.admission.retry import wait_elsewhere
from sollol_proxy.admission.slot_table import SlotTable
from sollol_proxy.admission.tickets import Held, Slot, Waiter
from sollol_proxy.admission.waitqueue import WaitQueue
from sollol_proxy.config import Config, QueueConfig
from sollol_proxy.fleet.health import State
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.lifecycle.drain import is_cut

if TYPE_CHECKING:
    from sollol_proxy.fleet.plan import Plan

log = logging.getLogger("sollol.admission")

# How often waiting requests are re-examined without a slot being released: ageing, and nodes
# coming back. Slot releases and arrivals are handled at once.
TICK_S = 0.25
PRIORITIES = range(0, 11)
# The cancel message of a waiter the proxy itself no longer needs (a spare worker of a split
# embedding call): it is not a client that left.
WITHDRAWN = "sollol-proxy: no longer needed"


class Admission:
    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self.slots = SlotTable()
        self._queue = WaitQueue(config.ageing)
        self._seq = itertools.count()
        self.stats = {p: PriorityStats() for p in PRIORITIES}
        self.gate: Gate | None = None  # replicas sharing slots in Redis (shared/slots.py)

    def reconfigure(self, config: Config) -> None:
        """A reload: new bounds apply to new arrivals and to the next pump; waiters stay."""
        self.config = config.queue
        self._queue.rekey(config.queue.ageing)
        self._pump()

    # -- slots --------------------------------------------------------------------------------

    def is_free(self, node: NodeState, model: str) -> bool:
        if not node.healthy:
            return False
        if not self.config.enabled:
            return True
        if not self.slots.holds(node.name):
            return True  # nothing of the proxy's runs there (and max_loaded is at least 1)
        if node.health.current() is State.HALF_OPEN:
            return False  # on trial: one request at a time until it has answered
        return self.slots.is_free(node, model) or (
            self.gate is not None and self.gate.reserved(node, model)
        )

    def free(self, nodes: list[NodeState], model: str) -> list[NodeState]:
        """The `nodes` that `is_free` says yes to, in one pass: a node where the proxy holds
        nothing (most of a large fleet's) costs a lookup, not a call."""
        if not self.config.enabled:
            return [n for n in nodes if n.healthy]
        held, is_free = self.slots.held, self.is_free
        return [n for n in nodes if (n.healthy and n.name not in held) or is_free(n, model)]

    def take(self, node: NodeState, model: str) -> None:
        self.slots.take(node, model)

    def give(self, node: NodeState, model: str, slot: Slot | None = None) -> None:
        self.slots.give(node, model)
        if self.gate is not None and slot is not None:  # before the pump: free in Redis too
            self.gate.give(node, model, slot)
        self._pump()

    # -- the queue ----------------------------------------------------------------------------

    def admit(
        self,
        priority: int,
        model: str,
        key: tuple[str, ...],
        candidates: Callable[[], list[NodeState]],
        choose: Callable[[list[NodeState]], Plan],
    ) -> AbstractAsyncContextManager[Slot]:
        """Wait for a slot (or raise QueueRejected), hold it for the block, release it after."""
        if self.gate is not None:
            return self.gate.admit(
                lambda nodes, since, jump: Held(
                    self._acquire(priority, model, key, nodes, choose, since, jump)
                ),
                priority,
                model,
                candidates,
            )
        return Held(self._acquire(priority, model, key, candidates, choose))

    def wake(self) -> None:
        """A slot freed elsewhere (another replica): hand it out now rather than at the tick."""
        self._pump()

    async def _acquire(
        self,
        priority: int,
        model: str,
        key: tuple[str, ...],
        candidates: Callable[[], list[NodeState]],
        choose: Callable[[list[NodeState]], Plan],
        since: float | None = None,  # asked before (the gate's refusal): keeps its place
        jump: bool = False,  # the gate holds a slot for it on its candidates: no queue
    ) -> Slot:
        band = self.config.band(priority)
        enqueued = time.monotonic() if since is None else since
        plan: Plan | None = None
        if not self._queue.keys or jump:
            # Nobody waits (the common case): a free slot is granted here, as the pump would,
            # with no Waiter and no Future; an exception is the request's, as from the pump.
            nodes = (
                [n for n in candidates() if n.healthy] if jump else self.free(candidates(), model)
            )
            plan = choose(nodes) if nodes else None
            if jump and (plan is None or plan.hold is not None):
                # The gate holds a slot for it there: it must not wait in the queue holding it.
                raise NotPlaced(model)
            # A plan that holds the request for a busy node (its prompt's slot) waits in the
            # queue like any other: the pump asks again when that node frees or the hold ends.
            if plan is not None and plan.hold is None:
                slot = Slot(
                    self,
                    plan,
                    plan.targets[0].node,
                    priority,
                    model,
                    key,
                    enqueued,
                    candidates,
                    choose,
                    band,
                )
                stats = self.stats[priority]
                stats.admitted += 1
                stats.waits.append(0.0)
                return slot
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        waiter = Waiter(
            priority,
            model,
            key,
            next(self._seq),
            enqueued,
            candidates,
            choose,
            band,
            future,
        )
        self._queue.push(waiter)
        if plan is not None and plan.hold is not None:  # asked already: held, as the pump holds
            waiter.hold = plan.hold
            delay = plan.hold.until - time.monotonic()
            asyncio.get_running_loop().call_later(max(delay, 0.0), self._pump)
        self._pump()
        immediate = future.done()
        if not immediate:  # it has to wait: the bounds apply
            self._bound(waiter)
        slot = await self._wait(waiter)
        if immediate:
            slot.waited_s = 0.0
        else:
            self.stats[priority].queued += 1
        return slot

    def _bound(self, waiter: Waiter) -> None:
        """A newcomer that must wait: past a length bound it is refused, or the least urgent
        waiter makes room for it (see bounds.py)."""
        if self._queue.fits(waiter, self.config):
            return
        others = [w for w in self._queue.live() if w is not waiter]
        for victim, rejection in over_bounds(self.config, waiter, others, time.monotonic()):
            if victim is None:
                self._remove(waiter)
                self.stats[waiter.priority].rejected += 1
                raise rejection
            self._remove(victim)
            if not victim.future.done():  # not a request cancelled a moment ago
                self.stats[victim.priority].shed += 1
                victim.future.set_exception(rejection)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def first_place(self) -> float | None:
        """The most urgent waiter's place in the queue (`enqueued - priority * ageing`, on the
        monotonic clock: smaller goes first), None when nobody waits; the replicas' shared
        order compares its parked requests with it (shared/parking.py)."""
        first = next(self._queue.ordered(), None)
        return None if first is None else first.enqueued - first.priority * self.config.ageing

    def _max_wait(self, waiter: Waiter | Slot) -> float:
        if waiter.band is not None and waiter.band.max_wait is not None:
            return waiter.band.max_wait
        return self.config.max_wait

    async def _wait(self, waiter: Waiter) -> Slot:
        stats = self.stats[waiter.priority]
        if waiter.future.done():  # a free slot at once (the common case): nothing to wait for
            slot = waiter.future.result()
            stats.admitted += 1
            stats.waits.append(0.0)
            return slot
        # The bound is a timer, and the future is awaited bare (no shield, no timeout's task
        # cancellation): a grant wakes the request in one hop of the loop, not two.
        expiry = asyncio.get_running_loop().call_later(self._max_wait(waiter), self._expire, waiter)
        try:
            slot = await waiter.future
        except asyncio.CancelledError as exc:
            # The client went away (or the shutdown cut the request): it leaves the queue at
            # once, or gives back the slot granted as it was leaving.
            if waiter.future.cancelled():
                self._remove(waiter)
                stats.left += not is_cut(exc) and exc.args[:1] != (WITHDRAWN,)
            elif waiter.future.exception() is None:
                waiter.future.result().release()
            raise
        finally:
            expiry.cancel()
        slot.waited_s = time.monotonic() - waiter.enqueued
        stats.admitted += 1
        stats.waits.append(slot.waited_s)
        return slot

    def _expire(self, waiter: Waiter) -> None:
        """The waiter's maximum wait is over and no slot came: it is turned away."""
        if waiter.future.done():
            return
        self._remove(waiter)
        self.stats[waiter.priority].timed_out += 1
        waiter.future.set_exception(timed_out(waiter, self._max_wait(waiter), time.monotonic()))

    def wait_left(self, slot: Slot) -> float:
        return slot.enqueued + self._max_wait(slot) - time.monotonic()

    async def retry_elsewhere(self, slot: Slot, tried: frozenset[str]) -> NodeState | None:
        slot.release()
        return await wait_elsewhere(
            slot, tried, self.wait_left(slot), self._queue, self._seq, self._pump
        )

    def _remove(self, waiter: Waiter) -> None:
        self._queue.remove(waiter)

    def _grant(self, waiter: Waiter, nodes: list[NodeState]) -> None:
        if waiter.future.done():  # its request was cancelled and has not left the queue yet
            self._remove(waiter)
            return
        try:
            if waiter.slot is not None:  # a retry: its slot moves to the first free node
                self._remove(waiter)
                self.take(nodes[0], waiter.model)
                waiter.slot.node = nodes[0]
                waiter.future.set_result(waiter.slot)
                return
            plan = waiter.choose(nodes)
            if plan.hold is not None:  # it stays in the queue, asked again at the deadline
                if waiter.hold is None or waiter.hold.until != plan.hold.until:
                    delay = plan.hold.until - time.monotonic()
                    asyncio.get_running_loop().call_later(max(delay, 0.0), self._pump)
                waiter.hold = plan.hold
                return
            self._remove(waiter)
            waiter.future.set_result(waiter.granted(self, plan))
        except Exception as exc:  # a routing failure answers this request, never the pump
            self._remove(waiter)
            waiter.future.set_exception(exc)

    def _pump(self) -> None:
        """Hand free slots to waiting requests (see pump.py)."""
        pump(self._queue, self.config, self.free, self._grant, self._fail_key)

    def _fail_key(self, key: tuple[str, ...], exc: Exception) -> None:
        for waiter in self._queue.live():
            if waiter.key == key:
                self._remove(waiter)
                if not waiter.future.done():
                    waiter.future.set_exception(exc)

    async def run(self) -> None:
        """Background tick: ageing reorders the queue, and nodes come back without a release."""
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._pump()
            except Exception:  # a bug here must not silently stop admissions
                log.exception("admission pump failed; retrying next tick")

    # -- what the stats endpoint and the metrics read ----------------------------------------

    def depth(self) -> dict[int, int]:
        return self._queue.depth(PRIORITIES)

    def snapshot(self, limit: int = 50) -> dict[str, Any]:
        """What GET /sollol/queue shows: settings, per-priority counts, slots, the next waiters."""
        now = time.monotonic()
        ageing = self.config.ageing
        return {
            **queue_snapshot(self.config, self.stats, self.depth(), self._queue.oldest(), now),
            "depth": self.waiting,
            "slots_in_use": self.slots.all_in_use(),
            "waiting": next_waiters(itertools.islice(self._queue.ordered(), limit), now, ageing),
        }
