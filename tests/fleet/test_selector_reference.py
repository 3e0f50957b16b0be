"""The selector's decisions are those of the straightforward ranking, on random fleets and
requests: a fresh snapshot of every free node, the prompt's probe put on each, every candidate
estimated, sorted by its estimate, the near-tie band ordered by load. The reference below is
kept here, not in the package: the selector is free to compute the same thing faster (kept
views, fewer passes, fewer objects), never to decide differently."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from sollol_proxy.admission.admission import Admission
from sollol_proxy.config import load_config
from sollol_proxy.config.policies import Priors
from sollol_proxy.fleet.capacity import model_slots
from sollol_proxy.fleet.decisions import DecisionLog, candidate_entry
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.node import Lease, NodeState
from sollol_proxy.fleet.plan import Candidates, NoTarget, Plan
from sollol_proxy.fleet.pricing import bounded, top_size
from sollol_proxy.fleet.prompt_cache import NO_PROBE, PromptCache
from sollol_proxy.fleet.selector import Selector
from sollol_proxy.fleet.snapshot import demand_by_model, node_view, wait_on
from sollol_proxy.fleet.views import GROWING_SHORT
from sollol_proxy.fleet.waiting import Hold
from sollol_proxy.routing import Choice, NodeView, RouteRequest
from sollol_proxy.routing.analysis import RequestProfile, analyze
from sollol_proxy.routing.performance import (
    NEAR_TIE_RATIO,
    NEAR_TIE_SLACK_S,
    category,
    describe,
    estimate,
    worth_waiting,
)
from sollol_proxy.wire.timings import Timings

GiB = 2**30
MODELS = [f"m{i}:latest" for i in range(6)]
SYSTEMS = [str(i) * 3000 for i in range(4)]
TOP = top_size(3)  # max_attempts' default: the candidates priced exactly


def reference_rank(request: RouteRequest, views: list[NodeView]) -> list[tuple[Choice, NodeView]]:
    """Performance's ranking, written the plain way."""
    scored = sorted(
        [(estimate(view, request), view) for view in views], key=lambda pair: pair[0].total
    )
    if not scored:
        return []
    best = scored[0][0].total
    band = best * NEAR_TIE_RATIO + NEAR_TIE_SLACK_S
    near = sorted(
        [pair for pair in scored if pair[0].total <= band],
        key=lambda pair: (pair[1].in_flight / pair[1].num_parallel, pair[0].total),
    )
    ordered = near + [pair for pair in scored if pair[0].total > band]
    generates = request.expected_output > 0
    result = []
    for i, (est, view) in enumerate(ordered):
        other = (ordered[1][0].total if len(ordered) > 1 else None) if i == 0 else best
        reason = describe(view, est, other, generates)
        result.append((Choice(view.name, reason, category(view), est), view))
    return result


def reference(
    demand: Mapping[str, float],
    fleet: Fleet,
    learner: Learner,
    cache: PromptCache,
    free: list[NodeState],
    profile: RequestProfile,
    now: float,
    holds: list[Hold],
) -> tuple[str | None, list[dict[str, Any]]]:
    """(the node it would hold for, or None) and the candidates as /sollol/decisions shows
    them, best first. Read before the selector runs: its reservation changes the cache.
    `demand`: the fleet's as the epoch's first request found it (views price evictions with
    it for the epoch). `holds`: the requests that chose to wait for a busy slot."""
    model = profile.model
    waitable = [n for n in fleet.with_model(model) if n.is_resident(model)]
    slots = {n.name: model_slots(n, model) for n in free}
    slots.update((n.name, model_slots(n, model)) for n in waitable)
    probes = cache.probe(model, profile.prefix_keys, slots, now)
    ratio = learner.token_ratio(model)
    views = []
    for node in free:
        view = node_view(node, profile, learner, 0, demand)
        probe = probes.get(node.name)
        if probe is not None:
            view = replace(
                view,
                cached_tokens=round(probe.cached * ratio),
                displaced_tokens=probe.displaced * ratio,
            )
            if probe.full_since is not None and view.model_in_flight < view.num_parallel:
                service = learner.service_s(node.name, model, profile.prompt_tokens)
                wait = max(service - (now - probe.full_since), 0.1 * service)
                view = replace(view, service_s=service, slot_wait_s=wait)
                if view.num_parallel > slots[node.name]:  # a growing belief: either outcome
                    right = 1.0 - GROWING_SHORT
                    view = replace(
                        view,
                        cached_tokens=round(view.cached_tokens * right),
                        displaced_tokens=view.displaced_tokens * right,
                        slot_wait_s=wait * right,
                    )
        views.append(view)
    request = RouteRequest(
        model=model,
        request_id="r",
        prompt_tokens=round(profile.prompt_tokens * ratio),
        # The selector counts the request (observe_request) before this is read: the same.
        expected_output=learner.expected_output(model, profile.task, profile.max_output),
    )
    ranked = reference_rank(request, views)
    waiting = []
    for n in waitable:
        if probes.get(n.name, NO_PROBE).waiting_cached:
            view = node_view(n, profile, learner, 0, demand)
            already = sum(h.node == n.name and h.until > now for h in holds)
            wait_on(view, profile, learner, probes[n.name], ratio, already, now)
            waiting.append(view)
    hold = (
        worth_waiting(request, [c.estimate for c, _ in ranked if c.estimate], waiting)
        if ranked
        else None
    )
    return hold.node if hold else None, [candidate_entry(c, v) for c, v in ranked]


def chat(rng: random.Random) -> RequestProfile:
    messages = [{"role": "system", "content": rng.choice(SYSTEMS)}]
    for turn in range(rng.randint(0, 2)):
        messages += [
            {"role": "user", "content": f"question {turn} " * rng.randint(1, 50)},
            {"role": "assistant", "content": "answer " * rng.randint(1, 50)},
        ]
    messages.append({"role": "user", "content": "hello " * rng.randint(1, 400)})
    model = rng.choice(MODELS[:3])  # most requests go to a few models
    payload: dict[str, Any] = {"model": model, "messages": messages}
    if rng.random() < 0.2:
        payload["options"] = {"num_ctx": rng.choice((2048, 8192))}
    return analyze("/api/chat", payload, model, True)


def fleet_of(rng: random.Random, clock: list[float]) -> tuple[Fleet, Learner, PromptCache]:
    zero_config = rng.random() < 0.5  # URLs only, as the product is used
    nodes = [
        {"url": f"n{i}", "name": f"n{i}"}
        if zero_config
        else {"url": f"n{i}", "name": f"n{i}", "num_parallel": rng.choice((1, 2, 4)), "vram": "24GiB"}
        for i in range(rng.randint(1, 40))
    ]  # fmt: skip
    config = load_config(None, env={}, overrides={"nodes": nodes})
    cache = PromptCache()
    fleet = Fleet(config, None, cache)  # type: ignore[arg-type]  # no probes here
    learner = Learner(Priors())
    for node in fleet.nodes.values():
        node.healthy = rng.random() < 0.95
        # The first node has every model: the fleet never has to look for one.
        disk = rng.sample(MODELS, rng.randint(1, len(MODELS)) if node.name != "n0" else len(MODELS))
        fleet.saw_tags(node, {"models": [{"model": m, "size": 6 * GiB} for m in disk]})
        loaded = rng.sample(disk, rng.randint(0, min(3, len(disk))))
        ps = {"models": [{"model": m, "size_vram": 6 * GiB} for m in loaded]}
        fleet.saw_ps(node, ps, asked_at=clock[0])
        for model in disk:
            if rng.random() < 0.5:  # measured here; elsewhere, other nodes' figures stand in
                learner.observe_success(
                    node.name, model, "chat", timing(rng), clean_load=False, cached_tokens=0,
                    ttft_s=None, elapsed_s=1.0,
                )  # fmt: skip
    return fleet, learner, cache


def timing(rng: random.Random) -> Timings:
    return Timings(
        1.0, 0.0, rng.randint(100, 3000), rng.uniform(0.05, 1.0), 50, rng.uniform(0.3, 3)
    )


async def one_fleet(seed: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int, int]:
    """(selections compared, of which holds for a busy slot, and with candidates beyond the
    top)"""
    rng = random.Random(seed)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    fleet, learner, cache = fleet_of(rng, clock)
    config = load_config(None, env={}, overrides={"nodes": [
        {"url": n.config.url, "name": n.name} for n in fleet.nodes.values()
    ], "queue": {"enabled": rng.random() < 0.7}})  # fmt: skip
    selector = Selector(config, fleet, learner, cache, DecisionLog(100))
    admission = Admission(config.queue)
    mocked = make_mocked_request("POST", "/api/chat")
    running: list[tuple[Lease, Any, NodeState, str]] = []
    compared = beyond = 0
    holds: list[Hold] = []
    for step in range(30):
        # Between steps: the fleet learns (which moves other nodes' stand-in figures, shown at
        # each node's next epoch) and the clock passes two epochs, so that every node's turned
        # (views may lag those figures for up to one); within a step, requests come and go.
        clock[0] = 1000.0 + 2 * step
        demand: dict[str, float] | None = None
        for _ in range(rng.randint(0, 3)):
            node = rng.choice(list(fleet.nodes.values()))
            if node.models:
                model = rng.choice(list(node.models))
                learner.observe_success(
                    node.name, model, "chat", timing(rng), clean_load=False, cached_tokens=0,
                    ttft_s=None, elapsed_s=1.0,
                )  # fmt: skip
        for i in range(rng.randint(1, 6)):
            clock[0] = 1000.0 + 2 * step + i * 1e-4
            if running and rng.random() < 0.4:  # a request ends
                lease, ticket, node, model = running.pop(rng.randrange(len(running)))
                lease.end()
                if ticket is not None:
                    cache.finish(ticket, answer=rng.randint(0, 300))
                admission.give(node, model)
            profile = chat(rng)
            routed = await selector.for_model(mocked, profile, f"r{step}.{i}", 5)
            if not isinstance(routed, Candidates):
                continue
            try:
                nodes = routed.nodes()
            except NoTarget:  # only on nodes that are down: nothing to rank
                continue
            free = [n for n in nodes if admission.is_free(n, profile.model)]
            if not free:
                continue
            if demand is None:
                demand = demand_by_model(fleet.healthy(), learner)
            held, expected = reference(
                demand, fleet, learner, cache, free, profile, clock[0], holds
            )
            plan: Plan = routed.choose(free)
            compared += 1
            if plan.hold is not None:
                assert plan.hold.node == held, (seed, step, i)
                holds.append(plan.hold)
                continue
            assert held is None, (seed, step, i)
            assert plan.decision is not None
            # The top is priced exactly, as the reference does; beyond it only who is there.
            shown = plan.decision.to_json()
            shown_exactly = TOP if bounded(len(free), TOP) else len(free)
            top, rest = expected[:shown_exactly], expected[shown_exactly:]
            assert shown["candidates"] == top, (seed, step, i)
            assert sorted(shown["others"]) == sorted(c["node"] for c in rest), (seed, step, i)
            first, after = plan.targets[:shown_exactly], plan.targets[shown_exactly:]
            assert [t.node.name for t in first] == [c["node"] for c in top]
            assert [t.route for t in first] == [f"performance: {c['reason']}" for c in top]
            assert [t.reason.value for t in first] == [c["category"] for c in top]
            assert [t.node.name for t in after] == shown["others"]  # failover's order
            beyond += len(rest) > 0
            node = plan.targets[0].node
            admission.take(node, profile.model)
            ticket = cache.take(
                node.name, profile.model, profile.prefix_keys, model_slots(node, profile.model)
            )
            running.append((Lease(node, profile.model), ticket, node, profile.model))
    return compared, len(holds), beyond


async def test_the_selector_decides_as_the_straightforward_ranking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared = held = beyond = 0
    for seed in range(40):
        ranked, holds, more = await one_fleet(seed, monkeypatch)
        compared, held, beyond = compared + ranked, held + holds, beyond + more
    assert compared > 1000 and held > 100  # both ways out of the selector were compared
    assert beyond > 300  # and fleets larger than the top: a ranking by bounds beyond it
