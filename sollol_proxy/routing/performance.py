"""Performance: send the request to the node expected to finish it soonest.

For each candidate the expected completion time is

    wait for a slot + load (or reload) + cost of what the load evicts
    + prefill of the prompt tokens the node does not have cached + decode of the expected output,

divided by the node's recent success rate (a node that fails half the time costs twice as much).
What it evicts includes the prefill other requests will repeat for the shared prefixes (system
prompts, preambles) the request's slot would push out of that node's cache. Every input comes from the snapshot:
in-flight counts, residency and runner options from /api/ps and the proxy's own dispatches,
speeds learned from Ollama's timing fields, cached and displaced tokens from the model of the
nodes' slots. Estimates within a near-tie band are ordered by load, so that a conversation's
cache affinity never piles work onto a saturated node.

`worth_waiting` weighs going now against waiting for a busy slot that holds the prompt: the
wait is worth it when the prefill it saves is larger than the expected wait, within a load
bound in the spirit of consistent hashing with bounded loads (Mirrokni et al.) and SGLang's
cache-aware router, whose balance threshold overrides cache affinity for a worker too far ahead:
once as many requests wait for a node as it has slots (`BALANCE_QUEUE`), its cache no longer
counts and the next request of the group takes a free node, which then holds the group's
prefix too. A group thus spreads over as few nodes as its load allows. The near-tie band, the
same as the ranking's, keeps a request from waiting for a saving within the noise.

Measured on the routing benchmark's shared-prompt workloads, a bound relative to the least
loaded node (SGLang's form) forbids nearly every wait at moderate load, because some node is
almost always idle, and doubled the misses; this absolute form is what is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from sollol_proxy.routing.types import Choice, Estimate, NodeView, Reason, RouteRequest

# Nodes whose estimates are within 10% (plus 50 ms) of the best are treated as equal.
NEAR_TIE_RATIO = 1.10
NEAR_TIE_SLACK_S = 0.05
MIN_SUCCESS = 0.05
# Requests per slot that may wait for a node's busy slots: bounded loads with c = 2, a node
# never carries more than twice its slots (all busy, and as many waiting for it).
BALANCE_QUEUE = 1.0
# A request waits at most this many times its expected wait for a busy slot: a slot that stays
# busy much longer than expected is better given up early than at the break-even point.
WAIT_PATIENCE = 2.0


def estimate(view: NodeView, request: RouteRequest) -> Estimate:
    slots = view.num_parallel
    busy = view.model_in_flight
    # Requests already sent for this model here take its slots first.
    queue = (busy - slots + 1) / slots * view.service_s if busy >= slots else 0.0
    if view.slot_wait_s is not None:  # the wait for one known slot
        queue = view.slot_wait_s
    wait = load = evict = 0.0
    if view.resident and view.options_match:
        wait = queue
    elif view.resident:
        # Different load-time options: Ollama drains the runner, then reloads it (reference 5.4).
        load = view.load_s + busy / slots * view.service_s
        evict = view.evict_s
    elif view.loading:
        # An earlier request is loading it: at most a whole load remains, then the queue.
        load, wait = view.load_s, queue
    else:
        # Loads are one at a time per node: queue behind the ones already under way.
        load = view.load_s * (1 + view.loads_pending)
        evict = view.evict_s
    uncached = max(request.prompt_tokens - view.cached_tokens, 1)
    prefill = uncached / view.prefill_tps
    # The learned decode speed already reflects the concurrency the node usually runs at.
    decode = request.expected_output / view.decode_tps
    # Pushing shared prefixes out of the node's cache is an eviction too: others will pay it.
    evict += view.displaced_tokens / view.prefill_tps
    total = (wait + load + evict + prefill + decode) / max(view.success, MIN_SUCCESS)
    # The same as Estimate(...), without the named tuple's Python-level __new__ (this runs
    # once per candidate per request).
    return tuple.__new__(Estimate, (total, wait, load, evict, prefill, decode))


def lower_bound(view: NodeView, request: RouteRequest) -> float:
    """At most `estimate(v, request).total` for every `v` the prompt cache's probe can make of
    `view` (fleet/views.py `probed`), and cheaper: the whole prompt cached but one token and
    nothing displaced (the probe only adds cached and displaced tokens), no wait where the
    probe may put one, a reload without the drain of the requests ahead (the probe may price
    their service time afresh). The same sums in the same order as `estimate`, each term no
    larger, so that floating-point rounding keeps it a bound too."""
    head, decode_tps, success = bound_parts(view)
    return bound(head, decode_tps, success, request.expected_output)


def bound(head: float, decode_tps: float, success: float, output: float) -> float:
    """`lower_bound` from a view's `bound_parts` and the request's expected output."""
    return (head + output / decode_tps) / success


def bound_parts(view: NodeView) -> tuple[float, float, float]:
    """What `lower_bound` takes from the view alone, kept with it (fleet/views.py): the sum
    before the decode term (`estimate` adds its terms left to right, so the same sum made
    first rounds alike), the decode speed and the success divisor."""
    slots = view.num_parallel
    busy = view.model_in_flight
    queue = (
        (busy - slots + 1) / slots * view.service_s
        if busy >= slots and view.slot_wait_s is None
        else 0.0
    )
    wait = load = evict = 0.0
    if view.resident and view.options_match:
        wait = queue
    elif view.resident:
        load = view.load_s
        evict = view.evict_s
    elif view.loading:
        load, wait = view.load_s, queue
    else:
        load = view.load_s * (1 + view.loads_pending)
        evict = view.evict_s
    prefill = 1 / view.prefill_tps
    return wait + load + evict + prefill, view.decode_tps, max(view.success, MIN_SUCCESS)


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait for a busy slot of `node` rather than go to a free node now."""

    node: str
    # Longer than this, and going now would have been faster (or the slot is busy for much
    # longer than expected).
    budget_s: float
    estimate: Estimate


def worth_waiting(
    request: RouteRequest, free: Sequence[Estimate], waiting: Sequence[NodeView]
) -> Wait | None:
    """The busy slot worth waiting for, if any, rather than the best of the nodes free now
    (`free`: their estimates). `waiting` are views of busy slots that hold more of the prompt
    than the free nodes (`slot_wait_s` set; `model_in_flight` counts the requests already
    waiting there)."""
    if not free:
        return None
    best_free = min(free, key=lambda est: est.total)
    best: tuple[NodeView, Estimate] | None = None
    for view in waiting:
        if (view.model_in_flight + 1 - view.num_parallel) / view.num_parallel > BALANCE_QUEUE:
            continue  # too far ahead: its cache affinity no longer counts
        est = estimate(view, request)
        if est.total * NEAR_TIE_RATIO + NEAR_TIE_SLACK_S >= best_free.total:
            continue
        if best is None or est.total < best[1].total:
            best = (view, est)
    if best is None:
        return None
    view, est = best
    saving = best_free.total - (est.total - est.wait)
    # Patience is counted in whole requests too: a slot whose request has run longer than
    # usual is expected to free any moment, but how long it goes on is unknown, and a hold
    # that expires just before the slot frees pays both the wait and the prefill it avoided.
    patience = WAIT_PATIENCE * max(est.wait, view.service_s) + NEAR_TIE_SLACK_S
    return Wait(view.name, min(saving, patience), est)


class Performance:
    name: ClassVar[str] = "performance"

    def rank(self, request: RouteRequest, candidates: Sequence[NodeView]) -> list[Choice]:
        return ranked(request, candidates, [estimate(view, request) for view in candidates])


def ranked(
    request: RouteRequest, candidates: Sequence[NodeView], estimates: Sequence[Estimate]
) -> list[Choice]:
    """`candidates` ranked by their `estimates` (made already: the selector's bounded
    pricing, fleet/pricing.py, makes them to know which candidates to price)."""
    if not candidates:
        return []
    # Candidates by estimate (stable: equal estimates keep the candidates' order), as
    # indices sorted on a list of totals: no pair or key function per candidate.
    totals = [est[0] for est in estimates]
    order = sorted(range(len(totals)), key=totals.__getitem__)
    best = totals[order[0]]
    band = best * NEAR_TIE_RATIO + NEAR_TIE_SLACK_S
    near = 1
    while near < len(order) and totals[order[near]] <= band:
        near += 1
    if near > 1:
        order[:near] = sorted(
            order[:near],
            key=lambda i: (candidates[i].in_flight / candidates[i].num_parallel, totals[i]),
        )
    first = order[0]
    runner_up = totals[order[1]] if len(order) > 1 else None
    generates = request.expected_output > 0
    result: list[Choice] = [Described(candidates[first], estimates[first], runner_up, generates)]
    result += [Described(candidates[i], estimates[i], best, generates) for i in order[1:]]
    return result


class Described(Choice):
    """A ranked node whose reason `describe` writes from its view and estimate, `compared`
    with the best other estimate, when first read: a request's few reasons read (its route
    header) are written, not one per candidate."""

    __slots__ = ("compared", "generates", "view")

    def __init__(
        self, view: NodeView, est: Estimate, compared: float | None, generates: bool
    ) -> None:
        self.node = view.name
        self._reason = ""
        self.category = category(view)
        self.estimate = est
        self.view = view
        self.compared = compared
        self.generates = generates

    @property
    def reason(self) -> str:
        if not self._reason:
            self._reason = describe(self.view, self.estimate, self.compared, self.generates)
        return self._reason

    @property
    def written(self) -> str:
        """The reason if it was read already, else ""."""
        return self._reason


# Read once: an enum member read through its class is a descriptor call, and this runs for
# every candidate of every request.
_CACHE_AFFINITY, _RESIDENT, _RELOAD = Reason.CACHE_AFFINITY, Reason.RESIDENT, Reason.RELOAD
_LOADING, _COLD_LOAD = Reason.LOADING, Reason.COLD_LOAD


def category(view: NodeView) -> Reason:
    if view.resident and view.options_match:
        return _CACHE_AFFINITY if view.cached_tokens else _RESIDENT
    if view.resident:
        return _RELOAD
    return _LOADING if view.loading else _COLD_LOAD


def _tokens(count: float) -> str:
    return f"{count / 1000:.1f}k" if count >= 1000 else f"{count:.0f}"


def duration(seconds: float) -> str:
    """`1.5s`, or `12ms` under a tenth of a second (an embedding is estimated in milliseconds)."""
    return f"{seconds:.1f}s" if seconds >= 0.1 else f"{seconds * 1000:.0f}ms"


def describe(view: NodeView, est: Estimate, other: float | None, generates: bool = True) -> str:
    """E.g. `resident, 1.8k cached tokens, est 0.9s vs 4.2s`; an embedding, which generates
    nothing, is `resident, input only, est 12ms vs 15ms`."""
    if view.resident and view.options_match:
        parts = ["resident"]
    elif view.resident:
        parts = [f"reload for options {duration(est.load)}"]
    elif view.loading:
        parts = [f"loading, up to {duration(est.load)}"]
    else:
        parts = [f"cold load {duration(est.load)}"]
    if not generates:
        parts.append("input only")
    if view.cached_tokens:
        parts.append(f"{_tokens(view.cached_tokens)} cached tokens")
    if est.wait:
        parts.append(f"slot wait {duration(est.wait)}")
    if est.evict:
        parts.append(f"evicts {duration(est.evict)}")
    if view.displaced_tokens:
        parts.append(f"pushes out {_tokens(view.displaced_tokens)} shared tokens")
    if view.success < 0.99:
        parts.append(f"success {view.success:.0%}")
    comparison = f"est {duration(est.total)}" + (
        f" vs {duration(other)}" if other is not None else ""
    )
    parts.append(comparison)
    return ", ".join(parts)
