"""Routing policy: pure and synchronous. Snapshots of the fleet in, a ranked list of nodes out.

Nothing here does I/O or touches the event loop, so every strategy is unit-testable as plain
functions and cheap enough to run on every request.
"""

from sollol_proxy.routing.least_loaded import LeastLoaded
from sollol_proxy.routing.performance import Performance
from sollol_proxy.routing.simple import Random, RoundRobin
from sollol_proxy.routing.types import (
    Choice,
    Estimate,
    NodeView,
    Reason,
    RouteRequest,
    Strategy,
)

STRATEGIES: dict[str, type[Strategy]] = {
    Performance.name: Performance,
    LeastLoaded.name: LeastLoaded,
    RoundRobin.name: RoundRobin,
    Random.name: Random,
}


def make_strategy(name: str) -> Strategy:
    return STRATEGIES[name]()


__all__ = [
    "STRATEGIES",
    "Choice",
    "Estimate",
    "LeastLoaded",
    "NodeView",
    "Performance",
    "Reason",
    "RouteRequest",
    "Strategy",
    "make_strategy",
]
