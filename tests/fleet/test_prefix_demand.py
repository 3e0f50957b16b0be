"""What a shared prefix and a conversation's history are worth keeping (fleet/prefix_demand.py)."""

from __future__ import annotations

import math

from sollol_proxy.fleet.prefix_demand import HISTORY_WORTH, Demand


def keys(*names: str) -> tuple[tuple[bytes, int], ...]:
    return tuple(("/".join(names[: i + 1]).encode(), 100 * (i + 1)) for i in range(len(names)))


def test_a_prefix_is_worth_its_share_of_the_requests_times_the_slots_split_over_its_copies() -> (
    None
):
    demand = Demand()
    for i in range(30):
        demand.count("m", keys("team" if i % 3 == 0 else f"alone {i}", "q"), now=i)
    # A third of the requests seen so far (not of a full window), on 2 slots: 2/3 per token.
    assert math.isclose(demand.worth("m", b"team", 1, 2), 2 / 3, rel_tol=0.02)
    assert math.isclose(demand.worth("m", b"team", 2, 2), 1 / 3, rel_tol=0.02)
    assert demand.worth("m", b"team", 1, 6) == 1.0  # capped at the whole prefix
    assert demand.worth("m", b"never asked", 1, 2) == 0.0
    assert demand.worth("other model", b"team", 1, 2) == 0.0


def test_a_history_is_worth_something_once_conversations_are_seen_coming_back() -> None:
    demand = Demand()
    assert demand.history("m", 1000, 0.0) == 0.0  # no follow-up seen yet
    demand.count("m", keys("sys", "q1"), now=0.0)
    demand.ended("m", keys("sys", "q1"), now=1.0)
    demand.count("m", keys("sys", "q1", "a1", "q2"), now=3.0)  # back after 2 s
    assert demand.history("m", 1000, 0.0) == 1000 * HISTORY_WORTH
    assert math.isclose(demand.history("m", 1000, 2.0), 1000 * HISTORY_WORTH / math.e)


def test_memory_is_bounded() -> None:
    demand = Demand(max_roots=10)
    for i in range(50):
        demand.count("m", keys(f"system {i}", "q"), now=i)
        demand.ended("m", keys(f"system {i}", "q"), now=i)
    assert len(demand) == 10
    assert demand.worth("m", b"system 49", 1, 1) > 0 and demand.worth("m", b"system 0", 1, 1) == 0
