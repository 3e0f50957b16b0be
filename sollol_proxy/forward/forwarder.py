"""Forward one request to the best node: the attempts, until one node's answer is relayed.

Errors before the client received anything become a retry on another node (retry.py decides
which), or a status. Errors after that are relay.py's: an in-stream error, never a silent end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from sollol_proxy.config import Config
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.health import Failure, State
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.plan import Target
from sollol_proxy.forward import probe_cut
from sollol_proxy.forward.failed import Failed, all_failed
from sollol_proxy.forward.pool import NodePool
from sollol_proxy.forward.probe_cut import Unserved
from sollol_proxy.forward.record import RequestRecord
from sollol_proxy.forward.relay import relay
from sollol_proxy.forward.retry import Permit, RetryBudget, Verdict, judge
from sollol_proxy.forward.upstream import Body, Outgoing, UpstreamFailure, open_upstream
from sollol_proxy.routing.types import Reason
from sollol_proxy.wire.headers import NODE_HEADER, QUEUE_HEADER, REQUEST_ID_HEADER, ROUTE_HEADER

if TYPE_CHECKING:
    from sollol_proxy.admission.tickets import Slot
    from sollol_proxy.forward.attempt import DispatchObserver

log = logging.getLogger("sollol.proxy")
# Waits for a slot elsewhere, per request: bounds a request whose granted nodes keep turning
# unusable (their health changed) before it could try them.
MAX_MOVES = 4


# What is done with the answer of the node that took the request: `relay` streams it to the
# client; the proxy's own sub-requests read it whole (`collect.py`), and may give it up as a
# Failed while the client has received nothing, so that another node tries.
Deliver = Callable[..., Awaitable["web.StreamResponse | Failed"]]


def _open(target: Target, fleet: Fleet) -> bool:
    """May `target` be tried now (as the loop below decides)?"""
    return target.pinned or fleet.may_take(target.node)


class Forwarder:
    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        fleet: Fleet,
        pool: NodePool | None = None,
    ) -> None:
        self._config = config
        self._session = session
        self._pool = pool  # the lean client (pool.py); the session for what it does not send
        self._fleet = fleet
        self.budget = RetryBudget(config.retries)
        self._rng = random.Random()

    def reconfigure(self, config: Config) -> None:
        self._config = config
        self.budget.policy = config.retries

    @contextlib.asynccontextmanager
    async def _unobserved(self, node: NodeState) -> AsyncIterator[None]:
        """An attempt nothing learns from (no model): only the node's in-flight count."""
        async with self._fleet.lease(node):
            yield None

    async def forward(
        self,
        request: Outgoing,
        body: Body,
        targets: Sequence[Target],
        record: RequestRecord,
        observer: DispatchObserver | None = None,
        *,
        first_byte: float | None,
        slot: Slot | None = None,
        deliver: Deliver = relay,
    ) -> web.StreamResponse:
        """Try `targets` in order until one answers; see retry.py for what is retried.

        `slot`, when admission control admitted the request, moves with each retry; a node
        without a free slot for it is skipped. With `relay` (the default) `request` is the
        client's `web.Request`."""
        self.budget.requests += 1
        try:
            return await self._forward(
                request, body, targets, record, observer, first_byte, slot, deliver
            )
        finally:
            self.budget.requests -= 1

    async def _forward(
        self,
        request: Outgoing,
        body: Body,
        targets: Sequence[Target],
        record: RequestRecord,
        observer: DispatchObserver | None,
        first_byte: float | None,
        slot: Slot | None,
        deliver: Deliver,
    ) -> web.StreamResponse:
        # A streamed upload cannot be sent twice.
        cap = self._config.max_attempts if isinstance(body, bytes | None) else 1
        failures: list[Failed] = []
        skipped: list[str] = []
        queue: Sequence[Target] = targets  # a selector's ranking makes each entry when read
        index = moves = 0
        requeued = False  # a probe given up once: the request does not probe again
        while len(failures) < cap:
            if index == len(queue):
                # The ranked nodes are used up: nodes that became available meanwhile may try,
                # or, under admission control, the next node to free a slot.
                more = self._others(queue, record) if failures and not queue[-1].pinned else []
                if not more and slot is not None and moves < MAX_MOVES:
                    moves += 1
                    moved = await slot.elsewhere(frozenset(f.node for f in failures))
                    if moved is not None:
                        more = [Target(moved, "next node with a free slot", Reason.RETRY)]
                if not more:
                    break
                queue = [*queue, *more]  # a new list: the plan's is left as it was
            target = queue[index]
            index += 1
            node = target.node
            if not target.pinned and not self._fleet.may_take(node):
                skipped.append(f"{node.name}: {node.health.current()}")
                continue
            if any(f.node == node.name for f in failures):
                continue  # listed again after a move to it below; it failed already
            if slot is not None and not slot.hold(node):
                # Its slots are all taken: the next node to free one is tried instead (the
                # queue holds the excess, so a retry normally finds every slot busy).
                skipped.append(f"{node.name}: no free slot")
                index = len(queue)
                continue
            permit = self.budget.try_acquire() if failures else None
            if failures and permit is None:
                why = (
                    f"not retried: retry budget spent ({self.budget.retries} retries in "
                    f"progress, limit {self.budget.limit()})"
                )
                log.warning("%s: %s", record.request_id, why)
                return all_failed(request, failures, skipped, record, why)
            # Read only up to the first node left to fail over to: a ranking's entries are made
            # as they are read, and a request mostly reads two of them.
            later = any(_open(queue[i], self._fleet) for i in range(index, len(queue)))
            if not later and not target.pinned:
                later = bool(self._others(queue, record))
            if not later and slot is not None:  # a node it could wait for a slot on
                later = bool(slot.alternatives(frozenset({node.name, *(f.node for f in failures)})))
            last_chance = not later or len(failures) + 1 >= cap
            try:
                if failures:
                    previous = self._fleet.nodes.get(failures[-1].node)  # a reload may drop it
                    if previous is not None:
                        previous.health.counters.failovers += 1
                    node.health.counters.retries += 1
                    record.retries += 1
                    await asyncio.sleep(self._config.retries.backoff(len(failures), self._rng))
                outcome = await self._try(
                    request,
                    body,
                    target,
                    record,
                    observer,
                    first_byte,
                    failures,
                    last_chance,
                    permit,
                    slot,
                    deliver,
                    may_cut=probe_cut.may_cut(self._config, slot, requeued, failures),
                )
            finally:
                if permit is not None:
                    permit.release()
            if isinstance(outcome, Unserved):
                assert slot is not None
                requeued = True
                moved = await slot.elsewhere(frozenset(f.node for f in failures))
                if moved is None:
                    failures.append(Failed(outcome.node, probe_cut.NO_SLOT_CAME, 503))
                    break
                queue = [*queue, Target(moved, probe_cut.route(outcome), Reason.RETRY)]
                index = len(queue) - 1
                continue
            if isinstance(outcome, Failed):
                failures.append(outcome)
                record.failed_attempts.append((outcome.node, outcome.reason))
                continue
            return outcome
        return all_failed(request, failures, skipped, record, "")

    def _others(self, listed: Sequence[Target], record: RequestRecord) -> list[Target]:
        """Nodes that can take the request now although the ranking did not list them (their
        state changed while the listed ones were tried)."""
        names = {t.node.name for t in listed}
        nodes = self._fleet.with_model(record.model) if record.model else self._fleet.healthy()
        return [
            Target(n, "next node that can take it now", Reason.RETRY)
            for n in nodes
            if n.name not in names
        ]

    async def _try(
        self,
        request: Outgoing,
        body: Body,
        target: Target,
        record: RequestRecord,
        observer: DispatchObserver | None,
        first_byte: float | None,
        failures: list[Failed],
        last_chance: bool,
        permit: Permit | None,
        slot: Slot | None,
        deliver: Deliver,
        *,
        may_cut: bool,
    ) -> web.StreamResponse | Failed | Unserved:
        """One attempt on one node: its answer relayed, or why it was given up. A retry's
        `permit` is given back as soon as the node has answered or failed. With `may_cut` a
        streamed probe is given up (`Unserved`) when its first byte is later than its patience."""
        node, health = target.node, target.node.health
        took_trial = health.begin() and health.state is State.HALF_OPEN
        judged = False
        # The observer's context directly, not wrapped in another: a model request's path.
        beside = (0, None) if slot is None else slot.beside_on(node)
        accounting = (
            observer.attempt(node, *beside) if observer is not None else self._unobserved(node)
        )
        try:
            async with accounting as attempt:
                patience = None
                if may_cut:
                    assert slot is not None
                    patience = probe_cut.patience(observer, attempt, slot, first_byte)
                try:
                    opened = await open_upstream(
                        self._session,
                        request,
                        node,
                        body,
                        first_byte if patience is None else patience,
                        self._pool,
                    )
                except UpstreamFailure as exc:
                    if patience is not None and exc.timed_out:
                        assert observer is not None and attempt is not None
                        return probe_cut.cut(observer, attempt, patience, record.request_id)
                    judged = True
                    if permit is not None:
                        permit.release()
                    if attempt is not None:
                        attempt.failed()
                    self._fleet.mark_failed(node, exc.reason, exc.kind)
                    log.warning(
                        "%s: node %s failed before the first byte: %s",
                        record.request_id,
                        node.name,
                        exc.reason,
                    )
                    return Failed(node.name, exc.reason, 504 if exc.timed_out else 502)
                status = opened.response.status
                verdict = judge(status, opened.first_chunk, record.model in node.models)
                judged = True
                if permit is not None:
                    permit.release()
                given_up = self._judged(node, verdict, status, record.model, last_chance)
                if given_up is not None:
                    opened.response.close()
                    if attempt is not None and verdict is not Verdict.MODEL_MISSING:
                        attempt.failed()
                    log.info("%s: %s; trying another node", record.request_id, given_up.reason)
                    return given_up
                route = target.route
                if failures:
                    route += " (after " + ", ".join(f"{f.node}: {f.reason}" for f in failures) + ")"
                routing = {
                    NODE_HEADER: node.name,
                    ROUTE_HEADER: route,
                    REQUEST_ID_HEADER: record.request_id,
                }
                if record.admitted:
                    routing[QUEUE_HEADER] = f"{record.queue_s * 1000:.0f}"
                if attempt is not None:
                    attempt.first_byte(status)
                record.node, record.route, record.status = node.name, route, status
                record.reason = target.reason.value
                return await deliver(
                    request,
                    opened,
                    node,
                    routing,
                    attempt,
                    record,
                    self._fleet,
                    self._config,
                    # The node is done with the request at its last byte: its slot can go to
                    # the next request while that byte is still on its way to the client.
                    upstream_done=slot.release if slot is not None else None,
                )
        finally:
            if took_trial and not judged:  # the client left first: the trial is free again
                health.abandoned()

    def _judged(
        self, node: NodeState, verdict: Verdict, status: int, model: str, last_chance: bool
    ) -> Failed | None:
        """The node's health after its answer; a Failed when another node should try."""
        health = node.health
        if verdict is Verdict.BUSY:
            self._fleet.note_busy(node, model, f"busy ({status})")
            reason = f"busy ({status})"
        elif verdict is Verdict.SERVER_ERROR:
            self._fleet.mark_failed(node, f"answered {status}", Failure.SERVER_ERROR)
            reason = f"answered {status}"
        elif verdict is Verdict.RELAY:
            health.answered()  # the failure count resets when the whole answer is through
            return None
        else:
            health.succeeded()  # the node is fine: its inventory was wrong
            self._fleet.model_missing(node, model)
            reason = f"model '{model}' not found (inventory refreshed)"
        # With nowhere else to go, the node's own answer reaches the client unchanged.
        return None if last_chance else Failed(node.name, reason, status)
