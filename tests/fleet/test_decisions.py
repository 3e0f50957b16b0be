"""Decisions kept in plain values and written out when read: the same JSON as the choices
they were made from, and nothing the garbage collector has to walk."""

from __future__ import annotations

import gc

from sollol_proxy.fleet.decisions import Decision, DecisionLog, candidate_entry
from sollol_proxy.routing import NodeView, RouteRequest, make_strategy
from sollol_proxy.routing.analysis import analyze

PROFILE = analyze(
    "/api/chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "m", True
)
REQUEST = RouteRequest("m", "r1", prompt_tokens=800, expected_output=120)
VIEWS = [
    NodeView("hot", 1, 2, True, model_in_flight=1, cached_tokens=600, displaced_tokens=30.0),
    NodeView("reload", 0, 2, True, options_match=False, model_in_flight=1, success=0.8),
    NodeView("cold", 0, 1, False, evict_s=2.5, loads_pending=1),
    NodeView("loading", 3, 4, False, loading=True, model_in_flight=5),
]


def test_a_decision_reads_as_its_choices_did() -> None:
    for name in ("performance", "least_loaded", "round_robin"):
        choices = make_strategy(name).rank(REQUEST, VIEWS)
        first_route = choices[0].reason  # the route header reads the first reason at once
        log = DecisionLog(10)
        log.add(Decision("r1", PROFILE, 7, name, REQUEST.expected_output, choices, VIEWS))
        shown = log.recent(1)[0]
        by_name = {v.name: v for v in VIEWS}
        assert shown["candidates"] == [candidate_entry(c, by_name[c.node]) for c in choices]
        assert shown["reason"] == first_route and shown["node"] == choices[0].node
        assert (shown["strategy"], shown["priority"], shown["served_by"]) == (name, 7, None)
        assert "queue_s" not in shown


def test_what_a_decision_keeps_is_not_tracked_by_the_collector() -> None:
    choices = make_strategy("performance").rank(REQUEST, VIEWS)
    decision = Decision("r1", PROFILE, 5, "performance", 120, choices, VIEWS)
    del choices
    gc.collect()  # a tuple of untracked values is untracked when a collection sees it
    assert not any(gc.is_tracked(value) for value in decision.candidates)
    assert not gc.is_tracked(decision.candidates) and not gc.is_tracked(decision.profile)
    decision.served_by, decision.queue_s = "hot", 0.123456
    shown = decision.to_json()
    assert (shown["served_by"], shown["queue_s"]) == ("hot", 0.1235)
    assert list(shown)[-1] == "queue_s"  # added last, as when it was a dict filled in later
