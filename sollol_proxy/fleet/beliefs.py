"""What the proxy believes each node can run at once: slots per model and memory, with the
evidence kept for them (the estimators are in estimator.py and memory.py; capacity.py is what the
rest reads).

A `NodeBeliefs` per node holds a `SlotBelief` per model (a `CapacityEstimator`, the proxy's
requests running there, and when the recent ones ended) and a `MemoryBelief` fed from /api/ps.

A node not measured yet is believed to be like its peers, and a growing belief is lifted to
what a peer proved (peers.py).

Restarts. A node's slots change only when its `ollama serve` restarts (or a runner is loaded
anew), so the estimators of a node are reset, keeping their value but no longer trusting it
(slow start again), when a node answers its probes again after failing them, answers a request
sent after one of its connections was refused or broke, or reports another version, and the
estimator of a model when its runner leaves /api/ps or an answer shows a load (load_duration)
where the model was believed loaded (capacity.learn). A restart that none of these shows is
caught by the estimator itself: waits where it had proofs, or free runs above it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sollol_proxy.config import NodeConfig
from sollol_proxy.fleet.estimator import CapacityEstimator, Change
from sollol_proxy.fleet.memory import MemoryBelief

if TYPE_CHECKING:
    from sollol_proxy.fleet.peers import Peers

log = logging.getLogger("sollol.capacity")

# End times kept per node and model, to tell how many requests ran beside one (see `overlap`).
ENDS_KEPT = 64
# How much later than its end at the node another replica's request is heard to have ended (its
# release through Redis): such ends up to this after a slot count as before it (errs low).
HEARD_LAG_S = 0.05
# How long a wait-free run's proof waits for the requests sent before it to show whether they
# waited; those still unknown then count as waiting (errs low).
PROOF_WAIT_S = 30.0


class SlotBelief:
    """One node's slots for one model, and the proxy's requests there."""

    __slots__ = (
        "_ends",
        "_heard",
        "_late",
        "_open",
        "_proofs",
        "estimator",
        "forced",
        "fresh",
        "running",
    )

    def __init__(self, estimator: CapacityEstimator, *, forced: bool) -> None:
        self.estimator = estimator
        self.forced = forced  # one slot whatever OLLAMA_NUM_PARALLEL says (embedding models, ...)
        self.fresh = True  # nothing observed here yet: it follows what its peers learned
        self.running = 0  # the proxy's requests on the node for this model, until its last byte
        self._ends: deque[float] = deque(maxlen=ENDS_KEPT)
        self._heard: deque[float] = deque(maxlen=ENDS_KEPT)  # other replicas' ends, when heard
        self._open: list[float] = []  # when the requests whose wait is not known yet were sent
        self._late: deque[tuple[float, float]] = deque(maxlen=ENDS_KEPT)  # (sent, slot) of waiters
        self._proofs: list[tuple[float, int, float]] = []  # wait-free runs: (sent, overlap, at)

    @property
    def evidence(self) -> bool:
        """Does this belief say something about the node's OLLAMA_NUM_PARALLEL?"""
        return not self.forced and (self.estimator.fixed is not None or not self.fresh)

    def dispatched(self, now: float, beside: int = 0) -> tuple[int, bool]:
        """A request was sent: how many are in flight, itself included, and whether it is a
        probe for one more slot than believed. `beside`: the slots the other replicas of the
        proxy held there when its was granted (shared/slots.py): a run without a wait proves,
        and a wait disproves, what the node ran for all of them, not for this replica alone."""
        self.running += 1
        self._open.append(now)
        k = self.running + beside
        return k, self.estimator.dispatched(k, now)

    def ended(self, now: float, probe: bool) -> None:
        """The node is done with one of them (its last byte, or a failure)."""
        self.running -= 1
        self._ends.append(now)
        if probe:
            self.estimator.probe_ended()

    def heard_ended(self, now: float) -> None:
        """Another replica of the proxy released a slot here (shared/slots.py)."""
        self._heard.append(now)

    def settled(self, sent: float, late_until: float | None, now: float) -> Change | None:
        """The request sent at `sent` is known to have had its slot from dispatch on
        (`late_until` None) or only from `late_until` (it waited, or it failed and nobody
        knows). The wait-free runs waiting on it are proven when nothing sent before them is
        unknown any more; what their proofs changed is returned."""
        with contextlib.suppress(ValueError):
            self._open.remove(sent)
        if late_until is not None and late_until > sent:
            self._late.append((sent, late_until))
        return self._prove(now) if self._proofs else None

    def ran_free(self, sent: float, overlap: int, now: float) -> Change | None:
        """The request sent at `sent` got its slot at once, beside `overlap` requests (itself
        included). Why not prove `overlap` slots now: requests sent together reach Ollama in
        any order, and its semaphore serves them in arrival order, so a later one can run at
        once while an earlier one, counted in its overlap, waits. The proof is made when the
        requests sent before it are settled, less those of them still waiting when it was sent."""
        with contextlib.suppress(ValueError):
            self._open.remove(sent)
        self._proofs.append((sent, overlap, now))
        return self._prove(now)

    def _prove(self, now: float) -> Change | None:
        first_open = min(self._open, default=math.inf)
        kept: list[tuple[float, int, float]] = []
        first: Change | None = None
        last: Change | None = None
        for proof in self._proofs:
            sent, overlap, at = proof
            if sent > first_open and now - at < PROOF_WAIT_S:
                kept.append(proof)
                continue
            unknown = sum(1 for s in self._open if s < sent)
            late = sum(1 for s, slot in self._late if s < sent < slot)
            k = max(1, overlap - unknown - late)
            change = self.estimator.finished(k, 0.0, now, overlap=k)
            if change is not None:
                first = first or change
                last = change
        self._proofs = kept
        if first is None or last is None or first is last:
            return first
        return Change(first.before, last.after, last.source, last.reason)

    def overlap(
        self, k: int, dispatched_at: float, slot_at: float, asked: float | None = None
    ) -> int:
        """Of the `k` requests in flight at `dispatched_at` (one included), how many were still in
        flight at `slot_at`. Ends of requests sent later count too, so it errs low: a proof
        from it never overstates. With too short a history it proves nothing beyond one. The
        other replicas' slots were counted by Redis when this one's was `asked` for, and their
        ends are heard late: those heard from `asked` to HEARD_LAG_S after the slot count."""
        ended = 0
        heard_from = dispatched_at if asked is None else min(asked, dispatched_at)
        windows = (
            (self._ends, dispatched_at, slot_at),
            (self._heard, heard_from, slot_at + HEARD_LAG_S),
        )
        for ends, since, until in windows:
            for at in reversed(ends):
                if at <= since:
                    break
                ended += at <= until
            else:
                if len(ends) == ENDS_KEPT:
                    return 1
        return max(1, k - ended)


class NodeBeliefs:
    """Everything believed about one node's capacity."""

    def __init__(self, config: NodeConfig) -> None:
        self.name = config.name
        self.configured = config.num_parallel
        self.slots: dict[str, SlotBelief] = {}
        self.memory = MemoryBelief(
            vram_bytes=config.vram_bytes, max_loaded=config.max_loaded_models
        )
        self.peers: Peers | None = None
        self._resident: set[str] = set()  # models in the last /api/ps
        # When and why a request's connection was last refused or broken, until `answered`.
        self._dropped: tuple[float, str] | None = None

    def reconfigure(self, config: NodeConfig) -> None:
        """A reload: settings now given (or no longer given) replace the beliefs they cover."""
        self.memory.configure(vram_bytes=config.vram_bytes, max_loaded=config.max_loaded_models)
        if config.num_parallel != self.configured:
            self.configured = config.num_parallel
            self.slots = {m: b for m, b in self.slots.items() if b.forced}
            self.changed()

    def slot(self, model: str, *, forced: bool) -> SlotBelief:
        """The belief for `model`, made on first use (`forced`: a single-slot model)."""
        belief = self.slots.get(model)
        if belief is None:
            if forced or self.configured is not None:
                estimator = CapacityEstimator(fixed=1 if forced else self.configured)
            else:
                estimator = CapacityEstimator(prior=self.prior(model))
            belief = self.slots[model] = SlotBelief(estimator, forced=forced)
        return belief

    def prior(self, model: str) -> int:
        """What a model not measured here is believed to get."""
        if self.configured is not None:
            return self.configured
        return 1 if self.peers is None else self.peers.prior(self, model)

    def note(self, model: str, change: Change | None) -> None:
        """Log a change of belief, and let the unmeasured beliefs follow it."""
        if change is None:
            return
        log.info("node %s, model %s: %s", self.name, model, change)
        self.changed()

    def changed(self) -> None:
        if self.peers is not None:
            self.peers.learned()

    def restarted(self, reason: str, models: Iterable[str] | None = None) -> None:
        """The node (or the runners of `models`) started anew: what was proven may be wrong."""
        for model in self.slots if models is None else models:
            belief = self.slots.get(model)
            if belief is not None:
                self.note(model, belief.estimator.reset(reason, eager=models is None))

    def dropped(self, now: float, reason: str) -> None:
        """A request's connection was refused or broke: `ollama serve` may be restarting."""
        self._dropped = (now, reason)

    def answered(self, sent: float) -> None:
        """A request sent at `sent` had its first byte: after dropped connections, a restart
        (an exiting `ollama serve` closes them all) that may show nowhere else (back within a
        health interval, a load too short to show, /api/ps seconds away)."""
        if self._dropped is not None and sent > self._dropped[0]:
            reason, self._dropped = self._dropped[1], None
            self.restarted(f"it answers again after dropping a request ({reason})")

    def observe_ps(self, loaded: Mapping[str, Mapping[str, Any]]) -> None:
        """A fresh /api/ps (normalized name -> item): runners that left, memory bounds."""
        gone = self._resident - loaded.keys()
        self._resident = set(loaded)
        if gone:
            self.restarted("its runner unloaded; the next load may have other slots", gone)
        before = (self.memory.vram_bytes, self.memory.max_loaded)
        if self.memory.observe({**item, "name": m} for m, item in loaded.items()):
            if self.peers is not None:
                self.peers.memory_learned()
            log.info(
                "node %s: memory believed: max_loaded_models %s -> %s, vram %s -> %s (%s)",
                self.name,
                before[1],
                self.memory.max_loaded,
                before[0],
                self.memory.vram_bytes,
                self.memory.source,
            )
