"""Which candidates a request prices exactly: enough for the top of `performance`'s ranking.

Only the first few candidates of a ranking can matter: the forwarder tries at most
`routing.max_attempts` of them, and `/sollol/decisions` shows the top. So the top `top`
(`top_size`: the attempts, and at least `TOP_MIN`) are priced exactly, probe and estimate, and
the others only by `performance.lower_bound`, which needs no probe and no estimate. The top is
the same as the whole fleet's exact ranking would give, by a branch and bound in two rounds:

1. every candidate's lower bound, and the `top` lowest priced exactly;
2. the threshold: the larger of the near-tie band of the best estimate (candidates in it are
   ordered by load, not by estimate) and the `top`-th best estimate. Every candidate not priced
   yet whose bound is at most the threshold is priced too. A candidate left out has an estimate
   above both (its bound is), so it is after the top in the ranking; pricing more only lowers
   the threshold, so one more round is never needed.

At most a few more than `top` are priced where the bounds are loose (nodes holding the model
and the prompt's prefix, whose bound assumes the whole prompt cached).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import NamedTuple

from sollol_proxy.fleet.prompt_cache import Probe
from sollol_proxy.fleet.views import Kept
from sollol_proxy.routing import Estimate, NodeView, RouteRequest
from sollol_proxy.routing.performance import NEAR_TIE_RATIO, NEAR_TIE_SLACK_S, estimate

TOP_MIN = 8
_BOUND = attrgetter("bound")


def top_size(max_attempts: int) -> int:
    """How many candidates are priced exactly: every failover attempt's, and at least TOP_MIN."""
    return max(TOP_MIN, max_attempts)


def bounded(candidates: int, top: int) -> bool:
    """Are only the top's candidates priced? Not in a fleet of up to twice the top: there
    nearly all of them are priced anyway, in two rounds of probing (measured: bounds and
    rounds cost more than the few estimates they save at 10 nodes)."""
    return candidates > 2 * top


class Priced(NamedTuple):
    views: list[NodeView]  # the candidates priced exactly, in the candidates' order
    estimates: list[Estimate]  # theirs
    others: list[Kept]  # the rest, lowest bound first
    probes: dict[str, Probe]  # what the probe found (with `extra`'s)


def price(
    bases: list[Kept],
    request: RouteRequest,
    top: int,
    probe: Callable[[list[str]], dict[str, Probe]],
    probed: Callable[[list[Kept], Mapping[str, Probe]], list[NodeView]],
    extra: list[str],
) -> Priced:
    """Price the candidates (`bases`) that can be in the top `top`: `probe(names)` finds what
    the prompt finds on those nodes, `probed` puts it on their views. `extra`: nodes probed in
    the first round too (the busy ones a request may wait for)."""
    # performance.lower_bound from the parts kept with each view: no call per candidate.
    output = request.expected_output
    bounds = [(h + output / d) / s for h, d, s in map(_BOUND, bases)]
    order = sorted(range(len(bounds)), key=bounds.__getitem__)
    first = order[:top]
    probes = probe([bases[i].name for i in first] + extra)
    views = probed([bases[i] for i in first], probes)
    estimates = [estimate(view, request) for view in views]
    totals = sorted(est[0] for est in estimates)
    band = totals[0] * NEAR_TIE_RATIO + NEAR_TIE_SLACK_S
    threshold = max(band, totals[min(top, len(totals)) - 1])
    more = len(first)
    while more < len(order) and bounds[order[more]] <= threshold:
        more += 1
    if more > len(first):
        second = [bases[i] for i in order[len(first) : more]]
        found = probe([entry.name for entry in second])
        views += probed(second, found)
        estimates += [estimate(view, request) for view in views[len(first) :]]
        probes.update(found)
    # The priced ones in the candidates' order: the ranking keeps it among equal estimates.
    priced = sorted(range(more), key=order.__getitem__)
    return Priced(
        [views[k] for k in priced],
        [estimates[k] for k in priced],
        [bases[i] for i in order[more:]],
        probes,
    )
