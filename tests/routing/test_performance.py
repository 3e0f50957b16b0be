"""The performance scorer's choices in the situations that matter. Pure: no event loop."""

from __future__ import annotations

import random
from dataclasses import replace

from sollol_proxy.routing import NodeView, RouteRequest, make_strategy
from sollol_proxy.routing.eviction import Runner, eviction_cost, victims
from sollol_proxy.routing.performance import (
    NEAR_TIE_SLACK_S,
    describe,
    estimate,
    lower_bound,
    worth_waiting,
)

REQUEST = RouteRequest(
    model="llama3.2:latest", request_id="r", prompt_tokens=3000, expected_output=200
)
BASE = NodeView(
    name="base",
    in_flight=0,
    num_parallel=2,
    resident=True,
    prefill_tps=2000,
    decode_tps=40,
    load_s=8.0,
    service_s=6.0,
)


def node(name: str, **changes: object) -> NodeView:
    return replace(BASE, name=name, **changes)


def ranked(*views: NodeView, request: RouteRequest = REQUEST) -> list[str]:
    return [c.node for c in make_strategy("performance").rank(request, views)]


def test_resident_beats_cold() -> None:
    assert ranked(node("cold", resident=False), node("warm")) == ["warm", "cold"]
    est = estimate(node("cold", resident=False, loads_pending=1), REQUEST)
    assert est.load == 16.0  # queued behind the load already under way: loads are one at a time


def test_cached_prefix_beats_none() -> None:
    order = ranked(node("plain"), node("cached", cached_tokens=2800))
    assert order == ["cached", "plain"]
    est = estimate(node("cached", cached_tokens=2800), REQUEST)
    assert est.prefill == 200 / 2000


def test_fast_node_beats_slow_one() -> None:
    assert ranked(node("slow", decode_tps=20), node("fast", decode_tps=90)) == ["fast", "slow"]


def test_saturated_affinity_node_loses_to_a_free_one() -> None:
    # The conversation's cache is on a node whose slots are all taken with long requests.
    busy = node("affinity", cached_tokens=2800, in_flight=4, model_in_flight=4, service_s=20)
    free = node("free")
    order = ranked(busy, free)
    assert order == ["free", "affinity"]
    assert estimate(busy, REQUEST).wait == 30.0  # 3 requests ahead of it on 2 slots


def test_near_ties_go_to_the_less_loaded_node() -> None:
    # Affinity saves a little, not enough to pile onto the busier node.
    busier = node("busier", cached_tokens=100, in_flight=1, model_in_flight=1)
    calmer = node("calmer")
    assert ranked(busier, calmer) == ["calmer", "busier"]


def test_options_mismatch_costs_a_reload_after_draining() -> None:
    mismatch = node("mismatch", options_match=False, model_in_flight=2, in_flight=2)
    est = estimate(mismatch, REQUEST)
    assert est.load == 8.0 + 6.0  # drain the runner, then load it again
    assert ranked(mismatch, node("cold", resident=False)) == ["cold", "mismatch"]


def test_failing_node_is_priced_by_its_success_rate() -> None:
    flaky = node("flaky", success=0.5)
    assert ranked(flaky, node("steady", decode_tps=30)) == ["steady", "flaky"]
    assert estimate(flaky, REQUEST).total == 2 * estimate(node("x"), REQUEST).total


def test_evicting_a_busy_popular_model_is_expensive() -> None:
    idle = node("evicts-idle", resident=False, evict_s=1.0)
    busy = node("evicts-busy", resident=False, evict_s=20.0)
    assert ranked(busy, idle) == ["evicts-idle", "evicts-busy"]


def test_reason_names_residency_cache_and_the_alternative() -> None:
    choices = make_strategy("performance").rank(
        REQUEST, [node("a", cached_tokens=1800), node("b", resident=False)]
    )
    assert choices[0].reason.startswith("resident, 1.8k cached tokens, est ")
    assert " vs " in choices[0].reason
    assert choices[1].reason.startswith("cold load 8.0s")
    assert choices[0].estimate is not None and choices[0].estimate.total < choices[1].estimate.total


def test_victims_follow_ollamas_order_and_cost_follows_demand() -> None:
    runners = [
        Runner("b", size=4, in_flight=0, expires_ns=0, load_s=5, drain_s=0, demand=1.0),
        Runner("a", size=4, in_flight=1, expires_ns=0, load_s=5, drain_s=3, demand=1.0),
        Runner("c", size=4, in_flight=0, expires_ns=10**30, load_s=5, drain_s=0, demand=0.1),
    ]
    # Room for 12 bytes, 12 in use, 4 more needed: one runner goes. `a` is first by name but
    # busy, so the first idle one goes; the kept-forever `c` sorts last.
    assert [r.model for r in victims(runners, 4, 12, max_loaded=5)] == ["b"]
    assert eviction_cost(runners, 4, 12, max_loaded=5) == 5.0
    # Needing everything: idle ones first (even kept-forever), then the busy one is drained.
    assert [r.model for r in victims(runners, 12, 12, max_loaded=5)] == ["b", "c", "a"]
    assert eviction_cost(runners, 12, 12, max_loaded=5) == 5 + (3 + 5) + 0.5
    assert victims(runners, 0, None, max_loaded=4) == []
    assert [r.model for r in victims(runners, 0, None, max_loaded=3)] == ["b"]


def test_an_embedding_is_estimated_without_output_and_in_milliseconds() -> None:
    embedding = RouteRequest(model="all-minilm", request_id="r", prompt_tokens=20)
    choices = make_strategy("performance").rank(
        embedding, [node("a", prefill_tps=2000), node("b", prefill_tps=1000)]
    )
    assert choices[0].estimate is not None and choices[0].estimate.decode == 0
    assert choices[0].reason == "resident, input only, est 10ms vs 20ms"
    assert choices[1].reason == "resident, input only, est 20ms vs 10ms"
    cold = make_strategy("performance").rank(embedding, [node("c", resident=False, load_s=0.5)])
    assert cold[0].reason == "cold load 0.5s, input only, est 0.5s"


def test_pushing_out_shared_prefixes_is_priced_as_an_eviction() -> None:
    keeps = node("keeps")
    pushes = node("pushes", displaced_tokens=2000)
    assert ranked(pushes, keeps) == ["keeps", "pushes"]
    assert estimate(pushes, REQUEST).evict == 2000 / 2000
    assert "pushes out 2.0k shared tokens" in describe(pushes, estimate(pushes, REQUEST), None)


def waiting(name: str, wait_s: float, waiting_ahead: int = 0, service_s: float = 0.25) -> NodeView:
    """A busy node (2 slots) whose busy slot holds 2800 tokens of the prompt, where a request
    usually holds a slot for `service_s`."""
    return node(
        name,
        cached_tokens=2800,
        model_in_flight=2 + waiting_ahead,
        slot_wait_s=wait_s,
        service_s=service_s,
    )


SHORT = replace(REQUEST, expected_output=20)  # 0.5 s of decode, 1.5 s of prefill uncached


def test_waiting_for_a_busy_slot_when_the_prefill_it_saves_is_larger() -> None:
    free = estimate(node("free"), SHORT)  # 2.0 s
    wait = worth_waiting(SHORT, [free], [waiting("busy", 0.3)])  # 0.3 + 0.1 + 0.5 s
    assert wait is not None and wait.node == "busy" and wait.estimate.wait == 0.3
    # Never longer than twice the expected wait, nor than the time it saves.
    assert wait.budget_s == 2 * 0.3 + NEAR_TIE_SLACK_S
    far = worth_waiting(SHORT, [free], [waiting("busy", 1.0)])
    assert far is not None and far.budget_s == free.total - (far.estimate.total - 1.0)
    # Not when the wait eats the saving, nor with no free node to compare with.
    assert worth_waiting(SHORT, [free], [waiting("busy", 1.4)]) is None
    assert worth_waiting(SHORT, [], [waiting("busy", 0.3)]) is None


def test_a_slot_busy_longer_than_usual_is_waited_for_a_whole_request_or_two() -> None:
    """Its request is expected to end any moment (0.05 s), but it has overrun: the patience is
    counted in whole requests (0.4 s each), not in what the expected wait says, so the hold
    does not give up just before the slot frees and pay the prefill after all."""
    free = estimate(node("free"), SHORT)
    wait = worth_waiting(SHORT, [free], [waiting("overrun", 0.05, service_s=0.4)])
    assert wait is not None and wait.budget_s == 2 * 0.4 + NEAR_TIE_SLACK_S


def test_no_more_requests_wait_for_a_node_than_it_has_slots() -> None:
    free = estimate(node("free"), SHORT)
    assert worth_waiting(SHORT, [free], [waiting("busy", 0.3, waiting_ahead=1)]) is not None
    assert worth_waiting(SHORT, [free], [waiting("busy", 0.3, waiting_ahead=2)]) is None
    # The cheapest wait wins.
    both = [waiting("later", 0.6), waiting("sooner", 0.2)]
    wait = worth_waiting(SHORT, [free], both)
    assert wait is not None and wait.node == "sooner"


def test_the_lower_bound_is_below_every_estimate_the_probe_can_make() -> None:
    """What the prompt cache's probe puts on a view (fleet/views.py `probed`): cached and
    displaced tokens, and where every slot is busy a wait for one with the service time
    priced afresh. The bound of the view without them is at most any such estimate."""
    rng = random.Random(7)
    for _ in range(20_000):
        slots = rng.choice((1, 2, 4))
        busy = rng.randint(0, 6)
        view = replace(
            BASE,
            num_parallel=slots,
            model_in_flight=busy,
            resident=rng.random() < 0.6,
            options_match=rng.random() < 0.8,
            loading=rng.random() < 0.2,
            loads_pending=rng.randint(0, 2),
            prefill_tps=rng.uniform(50, 5000),
            decode_tps=rng.uniform(5, 150),
            load_s=rng.uniform(0, 30),
            service_s=rng.uniform(0, 10),
            evict_s=rng.choice((0.0, rng.uniform(0, 20))),
            success=rng.uniform(0, 1),
        )
        request = replace(
            REQUEST,
            prompt_tokens=rng.randint(0, 9000),
            expected_output=rng.choice((0, rng.uniform(1, 900))),
        )
        probed = replace(
            view,
            cached_tokens=rng.randint(0, request.prompt_tokens + 10),
            displaced_tokens=rng.choice((0.0, rng.uniform(0, 5000))),
        )
        if busy < slots and rng.random() < 0.3:  # every slot busy, as the probe found
            service = rng.uniform(0, 10)
            probed = replace(probed, service_s=service, slot_wait_s=rng.uniform(0.1, 1) * service)
        assert lower_bound(view, request) <= estimate(probed, request).total, (view, probed)
