"""Routing strategies are pure functions: snapshots in, ranking out, no event loop."""

from __future__ import annotations

from sollol_proxy.routing import STRATEGIES, NodeView, RouteRequest, make_strategy

REQ = RouteRequest(model="llama3.2:latest", request_id="r1")


def names(choices: list) -> list[str]:
    return [c.node for c in choices]


def test_least_loaded_prefers_free_slot_then_resident_then_emptiest() -> None:
    strategy = make_strategy("least_loaded")
    nodes = [
        NodeView("busy-resident", in_flight=1, num_parallel=1, resident=True),
        NodeView("cold-idle", in_flight=0, num_parallel=1, resident=False),
        NodeView("resident-half", in_flight=1, num_parallel=2, resident=True),
        NodeView("resident-idle", in_flight=0, num_parallel=4, resident=True),
    ]
    assert names(strategy.rank(REQ, nodes)) == [
        "resident-idle",
        "resident-half",
        "cold-idle",
        "busy-resident",
    ]


def test_ties_spread_across_requests_but_are_deterministic() -> None:
    strategy = make_strategy("least_loaded")
    nodes = [NodeView(f"n{i}", 0, 1, True) for i in range(4)]
    firsts = {strategy.rank(RouteRequest("m", f"req{i}"), nodes)[0].node for i in range(40)}
    assert len(firsts) > 1
    assert strategy.rank(RouteRequest("m", "same"), nodes) == strategy.rank(
        RouteRequest("m", "same"), nodes
    )


def test_reason_describes_the_choice() -> None:
    choice = make_strategy("least_loaded").rank(REQ, [NodeView("a", 1, 4, True)])[0]
    assert choice.reason == "resident, 1/4 slots busy"


def test_every_registered_strategy_ranks_all_candidates() -> None:
    nodes = [NodeView("a", 0, 1, False), NodeView("b", 2, 2, True)]
    for name in STRATEGIES:
        assert sorted(names(make_strategy(name).rank(REQ, nodes))) == ["a", "b"]
