"""Routing strategies are pure functions: snapshots in, ranking out, no event loop."""

from __future__ import annotations

from sollol_proxy.routing import STRATEGIES, NodeView, RouteRequest, make_strategy

REQ = RouteRequest(model="llama3.2:latest", request_id="r1")


def names(choices: list) -> list[str]:
    return [c.node for c in choices]


def test_least_loaded_prefers_free_slot_then_resident_then_emptiest() -> None:
    strategy = make_strategy("least_loaded")

    def view(
        name: str, model_busy: int, slots: int, resident: bool, node_busy: int = 0
    ) -> NodeView:
        return NodeView(
            name,
            in_flight=max(node_busy, model_busy),
            num_parallel=slots,
            resident=resident,
            model_in_flight=model_busy,
        )

    nodes = [
        view("busy-resident", 1, 1, True),
        view("cold-idle", 0, 1, False),
        view("resident-half", 1, 2, True),
        view("resident-idle", 0, 4, True),
        # Slots are per model: requests for other models leave this one's slots free, so this
        # node is not saturated (it still ranks after emptier resident nodes).
        view("resident-other-models-busy", 0, 1, True, node_busy=3),
    ]
    assert names(strategy.rank(REQ, nodes)) == [
        "resident-idle",
        "resident-half",
        "resident-other-models-busy",
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
    choice = make_strategy("least_loaded").rank(
        REQ, [NodeView("a", 1, 4, True, model_in_flight=1)]
    )[0]
    assert choice.reason == "resident, 1/4 slots busy"


def test_every_registered_strategy_ranks_all_candidates() -> None:
    nodes = [NodeView("a", 0, 1, False), NodeView("b", 2, 2, True)]
    for name in STRATEGIES:
        assert sorted(names(make_strategy(name).rank(REQ, nodes))) == ["a", "b"]
