"""Every strategy's choice carries a bounded reason category (metric labels, the access log)."""

from __future__ import annotations

from sollol_proxy.routing import STRATEGIES, NodeView, Reason, RouteRequest, make_strategy

REQ = RouteRequest(model="m", request_id="r1", prompt_tokens=2000, expected_output=100)


def test_performance_names_why_each_node_ranks_where_it_does() -> None:
    views = [
        NodeView("cached", in_flight=0, num_parallel=1, resident=True, cached_tokens=1500),
        NodeView("resident", in_flight=0, num_parallel=1, resident=True),
        NodeView("reload", in_flight=0, num_parallel=1, resident=True, options_match=False),
        NodeView("loading", in_flight=0, num_parallel=1, resident=False, loading=True),
        NodeView("cold", in_flight=0, num_parallel=1, resident=False),
    ]
    categories = {c.node: c.category for c in make_strategy("performance").rank(REQ, views)}
    assert categories == {
        "cached": Reason.CACHE_AFFINITY,
        "resident": Reason.RESIDENT,
        "reload": Reason.RELOAD,
        "loading": Reason.LOADING,
        "cold": Reason.COLD_LOAD,
    }


def test_simple_strategies_have_one_category_each() -> None:
    views = [NodeView(n, in_flight=0, num_parallel=1, resident=True) for n in "abc"]
    expected = {
        "least_loaded": Reason.LEAST_LOADED,
        "round_robin": Reason.ROUND_ROBIN,
        "random": Reason.RANDOM,
    }
    for name, category in expected.items():
        assert {c.category for c in make_strategy(name).rank(REQ, views)} == {category}
    assert set(expected) | {"performance"} == set(STRATEGIES)
