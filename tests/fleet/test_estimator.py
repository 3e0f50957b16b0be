"""Capacity discovery on synthetic timings: a node whose runner has a hidden number of slots (a
FIFO semaphore, reference 5.2) is simulated in plain Python, with the proxy always having more
requests waiting than it lets in, as under the load that made the fixed num_parallel hurt."""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field

import pytest

from sollol_proxy.fleet.estimator import CapacityEstimator, slot_wait


@dataclass
class Request:
    dispatched_at: float
    k: int  # in flight at dispatch, itself included
    others: list[Request] = field(default_factory=list)  # the proxy's, in flight at dispatch
    probe: bool = False  # the estimator called it a probe: its end is reported
    started_at: float | None = None  # got a slot; its first byte comes then
    duration: float | None = None  # service time; None: the simulated node's usual
    ended_at: float | None = None

    def overlap(self) -> int:
        """What the proxy sees: how many of those in flight at dispatch were still streaming when
        this one's first byte came, itself included."""
        assert self.started_at is not None
        return 1 + sum(o.ended_at is None or o.ended_at > self.started_at for o in self.others)


@dataclass
class Sim:
    """A node with `slots` slots and the proxy in front of it, admitting up to the limit."""

    est: CapacityEstimator
    slots: int
    seed: int = 1
    now: float = 0.0
    finished: int = 0
    limits: list[int] = field(default_factory=list)  # the limit after each finish
    believed: list[int] = field(default_factory=list)
    probes: int = 0  # requests the estimator sent as probes
    waited: float = 0.0  # seconds the proxy's requests waited on the runner's semaphore

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.events: list[tuple[float, int, Request]] = []  # finish times
        self.waiting: deque[Request] = deque()  # on the runner's semaphore
        self.running = 0
        self.ours: dict[int, Request] = {}  # the proxy's requests in flight, by id
        self.seq = itertools.count()
        self._admit()

    def _service(self) -> float:
        return self.rng.uniform(0.8, 1.2)

    def _start(self, req: Request) -> None:
        req.started_at = self.now
        self.running += 1
        duration = req.duration or self._service()
        heapq.heappush(self.events, (self.now + duration, next(self.seq), req))

    def _arrive(self, req: Request) -> None:
        if self.running < self.slots and not self.waiting:
            self._start(req)
        else:
            self.waiting.append(req)

    def _admit(self) -> None:
        while len(self.ours) < self.est.limit:
            req = Request(self.now, len(self.ours) + 1, list(self.ours.values()))
            self.ours[id(req)] = req
            req.probe = self.est.dispatched(req.k, self.now)
            self.probes += req.probe
            self._arrive(req)

    def foreign(self, duration: float | None = None) -> None:
        """Another client sends the node a request the proxy does not know about."""
        self._arrive(Request(self.now, 0, duration=duration))

    def run(self, requests: int) -> None:
        stop = self.finished + requests
        while self.finished < stop:
            self.now, _, req = heapq.heappop(self.events)
            req.ended_at = self.now
            self.running -= 1
            if self.waiting and self.running < self.slots:
                self._start(self.waiting.popleft())
            if id(req) not in self.ours:
                continue
            del self.ours[id(req)]
            assert req.started_at is not None
            self.waited += req.started_at - req.dispatched_at
            wait = req.started_at - req.dispatched_at + self.rng.uniform(0.0, 0.008)
            total = self.now - req.dispatched_at
            self.est.finished(req.k, wait, self.now, total_s=total, overlap=req.overlap())
            if req.probe:
                self.est.probe_ended()
            self.finished += 1
            self.limits.append(self.est.limit)
            self.believed.append(self.est.believed)
            self._admit()

    def restart(self, slots: int) -> None:
        """The node restarts with another OLLAMA_NUM_PARALLEL: in-flight answers are cut."""
        for req in [r for _, _, r in self.events] + list(self.waiting):
            if id(req) in self.ours:
                self.est.finished(req.k, None, self.now)
                if req.probe:
                    self.est.probe_ended()
        self.events.clear()
        self.waiting.clear()
        self.ours.clear()
        self.running = 0
        self.slots = slots
        self._admit()


def test_belief_rises_to_the_truth_and_stops_there() -> None:
    for truth in (1, 2, 3, 4, 8, 16):
        sim = Sim(CapacityEstimator(prior=1), slots=truth)
        sim.run(40 * truth + 40)
        assert max(sim.believed) == truth  # a proof never overstates
        assert sim.est.believed == truth
        assert sim.est.source == "learned"


def test_learning_the_slots_makes_one_request_wait_inside_ollama() -> None:
    # A window of one beyond what is proven: until the first wait is heard of, one request at a
    # time waits for a slot, about one request's time (a second) in all. Doubling sent up to
    # twice the truth, and as many requests as there are slots waited about that long each.
    for truth in (1, 2, 4, 8, 16):
        sim = Sim(CapacityEstimator(prior=1), slots=truth)
        while sim.est.source != "learned":
            sim.run(1)
        assert sim.est.believed == truth and max(sim.limits) <= truth + 1
        assert sim.waited < 1.5


def test_a_wait_at_two_brackets_one_slot_without_a_proof() -> None:
    # Every runner has a slot: a wait at two (before any answer proved one) is the bracket, and
    # the next probe waits for the timed re-probe, not for the next dispatch.
    est = CapacityEstimator(prior=1, probe_every=30.0)
    assert not est.dispatched(2, now=0.0)  # slow start: one beyond the belief
    est.finished(2, 0.5, now=1.0, total_s=1.0)
    assert (est.believed, est.source, est.limit) == (1, "learned", 1)
    for i in range(20):
        est.dispatched(1, now=1.0 + i)
        est.finished(1, 0.0, now=1.5 + i, total_s=0.5)
    assert est.limit == 1
    est.dispatched(1, now=31.5)
    assert est.limit == 2


def test_under_steady_waits_the_limit_stays_within_one_of_the_truth() -> None:
    sim = Sim(CapacityEstimator(prior=1), slots=4)
    sim.run(100)
    sim.limits.clear()
    sim.believed.clear()
    probes = sim.probes
    sim.run(1000)
    assert set(sim.believed) == {4}
    assert set(sim.limits) <= {4, 5} and sim.probes > probes  # it keeps probing, one above
    assert sim.limits.count(5) < len(sim.limits) / 4  # and backs off after failed probes


def test_once_bracketed_the_truth_is_probed_only_every_probe_every_seconds() -> None:
    for truth in (1, 2, 4):
        sim = Sim(CapacityEstimator(prior=1, probe_every=30.0), slots=truth)
        while sim.est.source != "learned":  # slow start ends with a probe that waited
            sim.run(1)
        assert sim.est.believed == truth
        learned_at, probes = sim.now, sim.probes
        while sim.now < learned_at + 25.0:  # each request holds a slot about a second
            sim.run(1)
        assert sim.probes == probes  # a probe would cost a request a wait in Ollama
        while sim.now < learned_at + 40.0:
            sim.run(1)
        assert sim.probes > probes  # but a node that gained slots is still found


def _probe_times(sim: Sim, until: float) -> list[float]:
    times = []
    while sim.now < until:
        probes = sim.probes
        sim.run(1)
        if sim.probes > probes:
            times.append(sim.now)
    return times


def _timed_gaps(times: list[float]) -> list[float]:
    """The gaps between probes that were due by time (the quick ones before a bracket are not)."""
    return [b - a for a, b in itertools.pairwise(times) if b - a > 10.0]


def test_while_the_bracket_holds_the_time_between_probes_doubles_up_to_a_bound() -> None:
    sim = Sim(CapacityEstimator(prior=1, probe_every=30.0, probe_every_max=120.0), slots=2)
    while sim.est.source != "learned":
        sim.run(1)
    times = [sim.now, *_probe_times(sim, sim.now + 600.0)]  # from the wait that bracketed it
    # Each probe waits a request's time (about 1 s) before it counts, so a gap runs a little over.
    assert [round(g / 30) * 30 for g in _timed_gaps(times)] == [30, 60, 120, 120, 120, 120]
    assert sim.est.believed == 2


def test_a_node_that_gained_slots_is_probed_every_probe_every_seconds_again() -> None:
    sim = Sim(CapacityEstimator(prior=1, probe_every=30.0, probe_every_max=480.0), slots=2)
    assert max(_timed_gaps(_probe_times(sim, 400.0))) > 110.0  # the bracket held: minutes apart
    sim.restart(4)  # cut streams make a probe due at once; it runs free and slow start resumes
    times = [sim.now, *_probe_times(sim, sim.now + 100.0)]
    assert sim.est.believed == 4
    assert [round(g / 30) * 30 for g in _timed_gaps(times)] == [30.0, 60.0]


def test_a_wrong_prior_from_peers_is_lowered() -> None:
    sim = Sim(CapacityEstimator(prior=4), slots=1)
    sim.run(20)
    assert sim.est.believed == 1
    sim.run(200)
    assert set(sim.believed[-200:]) == {1}


def _requests_until(sim: Sim, believed: int, most: int) -> int:
    for n in range(most + 1):
        if sim.est.believed == believed:
            return n
        sim.run(1)
    raise AssertionError(f"still {sim.est.believed} slots, not {believed}, after {most} requests")


# Gaining slots takes a round of requests per slot (the window of one), so 1 -> 16 about 135.
@pytest.mark.parametrize(
    ("before", "after", "most"), [(1, 4, 40), (4, 1, 40), (1, 16, 140), (16, 1, 160)]
)
def test_a_restart_with_another_slot_count_is_learned_within_bounded_requests(
    before: int, after: int, most: int
) -> None:
    sim = Sim(CapacityEstimator(prior=1), slots=before)
    sim.run(200)
    assert sim.est.believed == before
    sim.restart(after)  # and nobody calls reset()
    _requests_until(sim, after, most)
    sim.believed.clear()
    sim.run(200)
    assert set(sim.believed) == {after}


def test_reset_starts_over_from_the_given_prior() -> None:
    sim = Sim(CapacityEstimator(prior=1), slots=4)
    sim.run(100)
    change = sim.est.reset("node restarted (/api/version)", prior=2)
    assert change is not None and (change.before, change.after) == (4, 2)
    assert sim.est.source == "default"
    sim.restart(8)
    sim.run(100)
    assert sim.est.believed == 8


def test_after_a_node_restart_the_window_is_two_beyond_the_belief_until_the_first_wait() -> None:
    # Requests queued while the node was away; a window of one learns one slot per round.
    finishes, waited = {}, {}
    for eager in (False, True):
        sim = Sim(CapacityEstimator(prior=1), slots=1)
        sim.run(50)
        before = sim.waited
        sim.est.reset("the node answers again", eager=eager)
        sim.restart(8)
        assert sim.est.limit == 2 + eager
        start = sim.finished
        while sim.est.believed < 8:
            sim.run(1)
        finishes[eager] = sim.finished - start
        sim.run(200)
        assert sim.est.believed == 8 and sim.est.limit <= 9  # one probe beyond, as before
        waited[eager] = sim.waited - before
    assert finishes[True] < finishes[False]
    # At most one more request waited a service time (about 1 s here) inside the runner.
    assert waited[True] < waited[False] + 1.5


def test_another_clients_occasional_requests_do_not_lower_the_belief() -> None:
    sim = Sim(CapacityEstimator(prior=1), slots=4)
    sim.run(100)
    sim.believed.clear()
    for _ in range(100):
        sim.foreign()  # each makes about a round of the proxy's requests wait
        sim.run(10)
    assert set(sim.believed) == {4}


def test_a_slot_held_by_another_client_is_given_up_then_probed_back() -> None:
    sim = Sim(CapacityEstimator(prior=1), slots=4)
    sim.run(100)
    sim.foreign(duration=100.0)
    sim.run(100)
    assert sim.est.believed == 3
    sim.run(300)
    assert sim.est.believed == 4


def test_waits_of_a_few_milliseconds_are_noise() -> None:
    est = CapacityEstimator(prior=1)
    est.finished(4, 0.0, now=0.0)
    for i in range(50):
        assert est.finished(4, 0.015, now=float(i), total_s=0.5) is None
        assert est.finished(3, 0.09, now=float(i), total_s=2.0) is None  # under 5 % of total
    assert est.believed == 4
    est.finished(4, 0.2, now=60.0, total_s=2.0)
    assert est.believed == 4  # a real wait, but one is not enough against a proof


def test_a_wait_free_run_proves_only_what_overlapped() -> None:
    est = CapacityEstimator(prior=1)
    est.finished(4, 0.0, now=0.0, overlap=2)  # two of the others ended before it started
    assert est.believed == 2
    est.finished(4, 0.0, now=1.0)
    assert est.believed == 4


def test_answers_without_timings_teach_nothing() -> None:
    est = CapacityEstimator(prior=2)
    for k in (1, 5, 9):
        assert est.finished(k, None, now=0.0) is None
    assert (est.believed, est.limit, est.source) == (2, 3, "default")


def test_lowering_needs_repeated_waits_and_more_against_a_fresh_proof() -> None:
    est = CapacityEstimator(prior=1, strikes=2, restart_rounds=1, proof_ttl=600.0)
    est.finished(4, 0.0, now=0.0)
    change = est.finished(5, 1.0, now=0.5, total_s=3.0)  # the first wait ends slow start
    assert change is not None and (change.after, change.source) == (4, "learned")
    for i in range(3):
        assert est.finished(3, 1.0, now=1.0 + i, total_s=3.0) is None
    est.finished(3, 0.0, now=5.0)  # runs at 3 after all: those waits were not ours
    for i in range(3):
        assert est.finished(3, 1.0, now=6.0 + i, total_s=3.0) is None
    change = est.finished(2, 1.0, now=10.0, total_s=3.0)
    assert change is not None and (change.before, change.after) == (4, 1)
    assert "used to run at once" in change.reason


def test_an_old_proof_no_longer_protects() -> None:
    est = CapacityEstimator(prior=1, strikes=2, restart_rounds=1, proof_ttl=600.0)
    est.finished(4, 0.0, now=0.0)
    est.dispatched(1, now=1000.0)
    est.finished(4, 1.0, now=1001.0, total_s=3.0)
    change = est.finished(4, 1.0, now=1002.0, total_s=3.0)
    assert change is not None and change.after == 3


def test_the_limit_respects_the_cap() -> None:
    sim = Sim(CapacityEstimator(prior=1, cap=6), slots=16)
    sim.run(200)
    assert (sim.est.believed, sim.est.limit) == (6, 6)
    assert max(sim.limits) == 6


def test_changes_are_reported_once() -> None:
    est = CapacityEstimator(prior=1)
    assert est.source == "default"
    change = est.finished(2, 0.0, now=0.0)
    assert change is not None and (change.before, change.after, change.source) == (1, 2, "probing")
    assert str(change) == "slots 1 -> 2 (probing): 2 in flight ran without a slot wait"
    assert est.finished(2, 0.0, now=1.0) is None
    change = est.finished(3, 2.0, now=2.0, total_s=5.0)
    assert change is not None and (change.after, change.source) == (2, "learned")


def test_configured_and_forced_values_never_change() -> None:
    for fixed in (1, 4):
        est = CapacityEstimator(prior=8, fixed=fixed)
        for i in range(20):
            est.dispatched(9, now=float(i))
            assert est.finished(9, 0.0, now=float(i)) is None
            assert est.finished(1, 5.0, now=float(i), total_s=9.0) is None
        assert est.reset("restart") is None
        assert (est.believed, est.limit, est.source) == (fixed, fixed, "configured")


def test_slot_wait_from_the_timing_fields() -> None:
    assert slot_wait(3.0, 0.01, 0.5, 1.5) == pytest.approx(0.99)
    assert slot_wait(1.0, 0.5, 0.3, 0.3) == 0.0  # rounding in Ollama's numbers


def test_a_belief_adopted_from_another_replica_is_learned_and_probed_from() -> None:
    estimator = CapacityEstimator(prior=1)
    change = estimator.adopt(4, "learned by another replica")
    assert change is not None and (change.before, change.after) == (1, 4)
    assert estimator.believed == 4 and estimator.source == "learned"
    assert estimator.limit == 5  # one probe above it, not slow start's doubling
    assert estimator.adopt(4, "again") is None
    # Adopting lower forgets what was proven above it: waits there are no longer contradictions.
    for _ in range(3):
        estimator.finished(4, 0.0, 1.0)
    estimator.adopt(2, "a restart seen elsewhere")
    assert estimator.believed == 2
    assert CapacityEstimator(fixed=3).adopt(5, "configured") is None
