"""One request's attempts, fed back into the live state of the fleet and into the learner.

Dispatches update the node state at once (in flight per model, loads under way, residency,
runner options, the slot the prompt takes in the node's cache); the background refresh corrects
it later. The final object's timing fields tell whether the prompt really was cached there. Each
attempt also teaches the node's slot belief (capacity.py): how many were in flight when it was
sent, and, from its answer, whether it waited for a slot and how many ran beside it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from sollol_proxy.fleet.beliefs import SlotBelief
from sollol_proxy.fleet.capacity import learn, model_slots, slot_belief
from sollol_proxy.fleet.decisions import Decision
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.node import Lease, NodeState
from sollol_proxy.fleet.prompt_cache import PromptCache, Ticket
from sollol_proxy.fleet.snapshot import planned_victims
from sollol_proxy.routing.analysis import RequestProfile
from sollol_proxy.wire.timings import Timings

# A probe (one request more than the node's believed slots) that finds them all taken waits on
# Ollama's semaphore for a whole generation, seconds to minutes, before its first byte: one with
# no first byte this long after its prefill and first token should have come is given up, the
# client having received nothing, and waits in the proxy's queue instead (forwarder.py). A
# late first byte cut by mistake costs a prefill and one backed-off probe.
PROBE_PATIENCE_S = 0.25
PROBE_PATIENCE_FACTOR = 3.0


class Attempt:
    """The request on one node, from dispatch to its last byte."""

    def __init__(self, observer: DispatchObserver, node: NodeState) -> None:
        self._observer = observer
        self.node = node
        self.started = time.monotonic()
        self.first_byte_at: float | None = None
        self.cold = False  # the model was not resident here when the request was sent
        self.victims: list[str] = []  # what Ollama will unload here to load it
        # Ollama's load_duration includes waiting for other loads and for busy victims to
        # drain: only a load with neither measures the load itself.
        self.clean_load = False
        self.holding = False  # counted in node.loading / node.evicting
        self.ticket: Ticket | None = None  # the slot its prompt takes in the node's cache
        self.lease: Lease | None = None  # counted in the node's in-flight numbers
        self.slots: SlotBelief | None = None  # the belief it counts in, until the node is done
        # The proxy's requests in flight for the model there when sent, itself included (with
        # replicas, those of the others too, as Redis counted them at its grant).
        self.k = 0
        self.probe = False  # sent to see whether the node has one more slot than believed
        # The belief it counts in among the requests whose wait is not known yet.
        self.unsettled: SlotBelief | None = None
        self.asked: float | None = None  # when its shared slot was asked for (replicas)
        self.unsure = 0  # of the other replicas' slots in `k`, those that may have been waiting

    def node_done(self) -> None:
        """The node is done with the request (its last byte, or the attempt ended otherwise)."""
        if self.slots is not None:
            self.slots.ended(time.monotonic(), self.probe)
            self.slots = None

    def settle(self, model: str) -> None:
        """Its answer told nothing of when it had its slot (a failure, an error, a cut): the
        proofs waiting on it count it as waiting until now."""
        belief, self.unsettled = self.unsettled, None
        if belief is not None:
            now = time.monotonic()
            late_until = now if self.first_byte_at is None else self.first_byte_at
            self.node.beliefs.note(model, belief.settled(self.started, late_until, now))

    def first_byte(self, status: int) -> None:
        self.first_byte_at = time.monotonic()
        self._observer.first_byte(self, status)

    def finished(self, status: int, timings: Timings | None) -> None:
        """The whole answer was relayed; `timings` are those of its final object, if any."""
        self._observer.finished(self, status, timings)

    def failed(self) -> None:
        self._observer.learner.observe_failure(self.node.name)
        if self.slots is not None:  # the node may have restarted: a probe will soon tell
            self.slots.estimator.finished(self.k, None, time.monotonic())


class DispatchObserver:
    def __init__(
        self,
        fleet: Fleet,
        learner: Learner,
        cache: PromptCache,
        profile: RequestProfile,
        decision: Decision | None = None,
    ) -> None:
        self.fleet = fleet
        self.learner = learner
        self.cache = cache
        self.profile = profile
        self.decision = decision

    @contextlib.asynccontextmanager
    async def attempt(
        self, node: NodeState, beside: int = 0, asked: float | None = None, unsure: int = 0
    ) -> AsyncIterator[Attempt]:
        """`beside`: the slots the other replicas of the proxy held on `node` for the model when
        this request's was granted (0: none, or not known), asked for at `asked`; they count as
        in flight, less those heard to end after `asked` (`SlotBelief.overlap`), and a run
        without a wait does not prove the `unsure` of them that may have been waiting."""
        model = self.profile.model
        attempt = Attempt(self, node)
        attempt.asked, attempt.unsure = asked, unsure
        if not node.is_resident(model):
            attempt.cold = True
            runners = {r.model: r for r in planned_victims(node, model, self.learner)}
            attempt.victims = list(runners)
            attempt.clean_load = node.loads_pending(model) == 0 and not any(
                r.in_flight for r in runners.values()
            )
            # Until the node answers, the load is under way and its victims are on their way
            # out: no other request is routed to them as if they were still loaded.
            self._hold(attempt, 1)
        async with self.fleet.lease(node, model) as attempt.lease:
            attempt.slots = slot_belief(node, model)
            if attempt.slots is not None:
                attempt.k, attempt.probe = attempt.slots.dispatched(attempt.started, beside)
                attempt.unsettled = attempt.slots
                node.changes += 1  # the slots routing plans with may have moved
            attempt.ticket = self.cache.take(
                node.name,
                model,
                self.profile.prefix_keys,
                model_slots(node, model),
                fresh=attempt.cold,
            )
            try:
                yield attempt
            finally:
                self._hold(attempt, -1)
                attempt.node_done()
                attempt.settle(model)
                if attempt.ticket is not None:  # not finished: failed, or cut short
                    self.cache.finish(attempt.ticket, served=attempt.first_byte_at is not None)

    def probe_patience(self, attempt: Attempt, wait_left: float) -> float | None:
        """How long a streamed probe may go without a first byte before it counts as waiting
        for a slot (None: not such a probe, or too little of the request's maximum wait,
        `wait_left`, is left to wait for the next free slot: better served late inside Ollama
        than answered 503). Its prefill is priced as routing prices it (measured here, else on
        its peers, else the priors), its cached prefix ignored."""
        profile = self.profile
        if not attempt.probe or attempt.cold or not profile.stream:
            return None
        if attempt.node.runner_options.get(profile.model) != profile.runner_options:
            return None  # other load-time options: Ollama reloads the runner first
        node, model, learner = attempt.node.name, profile.model, self.learner
        tokens = profile.prompt_tokens * learner.token_ratio(model)
        expected = tokens / learner.prefill_tps(node, model) + 1.0 / learner.decode_tps(node, model)
        # A node slower than priced (its prefill never measured clean) shows it in its streams'
        # first bytes, waits included: a cut by mistake would take a slot it has for a wait.
        expected = max(expected, learner.ttft_s(node, model) or 0.0)
        patience = PROBE_PATIENCE_S + PROBE_PATIENCE_FACTOR * expected
        # A slot there frees within about one request's hold: two of them, and the patience.
        if wait_left < patience + 2 * learner.service_s(node, model, profile.prompt_tokens):
            return None
        return patience

    def probe_waited(self, attempt: Attempt, waited_s: float) -> None:
        """The probe had no first byte within its patience: it is waiting for a slot, so the
        node has no more than believed (the probe is cut by the caller)."""
        belief = attempt.slots
        if belief is not None:
            change = belief.estimator.finished(
                attempt.k, waited_s, time.monotonic(), total_s=waited_s
            )
            attempt.node.beliefs.note(self.profile.model, change)

    def _hold(self, attempt: Attempt, step: int) -> None:
        if attempt.holding == (step > 0):
            return
        attempt.holding = step > 0
        node = attempt.node
        node.hold(node.loading, [self.profile.model], step)
        node.hold(node.evicting, attempt.victims, step)

    def first_byte(self, attempt: Attempt, status: int) -> None:
        node, model = attempt.node, self.profile.model
        self._hold(attempt, -1)
        if self.decision is not None:
            self.decision.served_by = node.name
        if status != 200:
            return
        node.beliefs.answered(attempt.started)
        if attempt.victims:  # the load happened: its victims are gone, and their caches
            for victim in attempt.victims:
                node.loaded.pop(victim, None)
                node.recent.pop(victim, None)
                node.runner_options.pop(victim, None)
            self.cache.forget(node.name, attempt.victims)
        previous = node.runner_options.get(model)
        if previous is not None and previous != self.profile.runner_options:
            self.cache.forget(node.name, [model])  # Ollama reloaded the runner: its cache is gone
        node.runner_options[model] = self.profile.runner_options
        node.recent[model] = time.monotonic()
        node.changes += 1

    def finished(self, attempt: Attempt, status: int, timings: Timings | None) -> None:
        node, profile = attempt.node, self.profile
        belief = attempt.slots
        if belief is not None:
            attempt.node_done()
            if status >= 500:
                belief.estimator.finished(attempt.k, None, time.monotonic())
            elif status == 200:
                attempt.unsettled = None
                learn(
                    node,
                    profile.model,
                    belief,
                    attempt.k,
                    attempt.started,
                    attempt.first_byte_at,
                    timings,
                    profile.stream,
                    time.monotonic(),
                    cold=attempt.cold,
                    asked=attempt.asked,
                    unsure=attempt.unsure,
                )
        if attempt.lease is not None:  # the node is done with it: others are routed on that
            attempt.lease.end()
        ticket, attempt.ticket = attempt.ticket, None
        if status != 200:
            if ticket is not None:
                self.cache.finish(ticket, served=False)
            if status >= 500:
                self.learner.observe_failure(node.name)
            return
        # A prompt some slot there held may have been cached after all: no clean prefill speed.
        maybe_cached = max(ticket.take.cached, ticket.take.nearest) if ticket else 0
        if ticket is not None:
            self._finish_ticket(ticket, timings)
        now = time.monotonic()
        self.learner.observe_success(
            node.name,
            profile.model,
            profile.task,
            timings,
            clean_load=attempt.clean_load,
            cached_tokens=maybe_cached,
            ttft_s=(attempt.first_byte_at - attempt.started)
            if profile.stream and attempt.first_byte_at
            else None,
            elapsed_s=now - attempt.started,
            estimated_prompt_tokens=profile.prompt_tokens,
        )

    def _finish_ticket(self, ticket: Ticket, timings: Timings | None) -> None:
        """The prompt and its answer are in the slot now; the timing fields say whether the
        prediction was right (judged at the speed learned before this answer)."""
        model = self.profile.model
        ratio = self.learner.token_ratio(model)
        if timings is None or not timings.prompt_tokens:
            self.cache.finish(ticket)
            return
        speed = self.learner.measured_prefill_tps(ticket.node, model)
        self.cache.finish(
            ticket,
            answer=round(timings.output_tokens / ratio),
            prompt_count=timings.prompt_tokens,
            observed=None
            if speed is None
            else round(timings.prompt_tokens - timings.prompt_s * speed),
            ratio=ratio,
        )
