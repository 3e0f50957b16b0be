"""Views kept between requests: after any of the node's own events a kept view is the one a
fresh snapshot would give; what other nodes change shows at the next epoch; the table stays
bounded by nodes x models."""

from __future__ import annotations

import random
from dataclasses import fields, replace
from typing import Any

import pytest

from sollol_proxy.config import load_config
from sollol_proxy.config.policies import Priors
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.node import Lease, NodeState
from sollol_proxy.fleet.prompt_cache import Probe, PromptCache
from sollol_proxy.fleet.snapshot import node_view
from sollol_proxy.fleet.views import (
    EPOCH_S,
    GROWING_SHORT,
    Views,
    epoch_offset,
    probed,
    with_probe,
)
from sollol_proxy.routing import NodeView
from sollol_proxy.routing.analysis import RequestProfile, analyze
from sollol_proxy.wire.timings import Timings

GiB = 2**30
MODELS = [f"m{i}:latest" for i in range(5)]


def fleet_of(count: int, num_parallel: int | None = None) -> tuple[Fleet, Learner]:
    told = {} if num_parallel is None else {"num_parallel": num_parallel}
    nodes = [{"url": f"n{i}", "name": f"n{i}", "vram": "24GiB", **told} for i in range(count)]
    config = load_config(None, env={}, overrides={"nodes": nodes})
    fleet = Fleet(config, None, PromptCache())  # type: ignore[arg-type]  # no probes here
    learner = Learner(Priors())
    for node in fleet.nodes.values():
        node.healthy = True
        fleet.saw_tags(node, {"models": [{"model": m, "size": 6 * GiB} for m in MODELS]})
        # Measured everywhere, so that no node's figures stand in for another's.
        for model in MODELS:
            learner.observe_success(
                node.name, model, "chat", timing(0.5), clean_load=False, cached_tokens=0,
                ttft_s=None, elapsed_s=1.0,
            )  # fmt: skip
    return fleet, learner


def timing(output_s: float) -> Timings:
    return Timings(1.0, 0.0, 500, 0.2, 40, output_s)


def profile(model: str, num_ctx: int | None = None) -> RequestProfile:
    options = {} if num_ctx is None else {"options": {"num_ctx": num_ctx}}
    payload = {"model": model, "messages": [{"role": "user", "content": "hi " * 300}], **options}
    return analyze("/api/chat", payload, model, True)


def event(rng: random.Random, fleet: Fleet, learner: Learner, leases: list[Lease]) -> None:
    """One thing the proxy sees happen to one node."""
    node: NodeState = rng.choice(list(fleet.nodes.values()))
    model = rng.choice(MODELS)
    kind = rng.randrange(7)
    if kind == 0:
        leases.append(Lease(node, model))
    elif kind == 1 and leases:
        leases.pop(rng.randrange(len(leases))).end()
    elif kind == 2:
        loaded = rng.sample(MODELS, rng.randint(0, 3))
        ps = {"models": [{"model": m, "size_vram": 6 * GiB} for m in loaded]}
        fleet.saw_ps(node, ps, asked_at=0.0)
    elif kind == 3:
        node.hold(node.loading if rng.random() < 0.5 else node.evicting, [model], 1)
    elif kind == 4:
        learner.observe_success(
            node.name, model, "chat", timing(rng.uniform(0.5, 2.0)), clean_load=False,
            cached_tokens=0, ttft_s=None, elapsed_s=1.0,
        )  # fmt: skip
    elif kind == 5:
        learner.observe_failure(node.name)
    else:
        fleet.model_missing(node, model)
        fleet.saw_tags(node, {"models": [{"model": m, "size": 6 * GiB} for m in MODELS]})


def test_a_kept_view_is_what_a_fresh_snapshot_gives_after_the_nodes_own_events() -> None:
    rng = random.Random(5)
    fleet, learner = fleet_of(6)
    views = Views(learner, fleet.healthy)
    leases: list[Lease] = []
    profiles = [profile(m) for m in MODELS] + [profile(MODELS[0], num_ctx=4096)]
    reused = 0
    for step in range(400):
        event(rng, fleet, learner, leases)
        wanted = rng.choice(profiles)
        nodes = list(fleet.nodes.values())
        before = {id(k.view) for k in views.bases(nodes, wanted, now=1.0)} if step % 2 else set()
        bases = views.bases(nodes, wanted, now=1.0)  # one epoch throughout
        fresh = [node_view(n, wanted, learner, 0, views.demand()) for n in nodes]
        assert [kept.view for kept in bases] == fresh, step
        reused += sum(id(kept.view) in before for kept in bases)
    assert reused > 0  # nothing changed between the two looks: the views were kept


def test_what_other_nodes_teach_shows_at_the_next_epoch() -> None:
    fleet, learner = fleet_of(2)
    ps = {"models": [{"model": m, "size_vram": 6 * GiB} for m in MODELS[:3]]}
    for node in fleet.nodes.values():
        fleet.saw_ps(node, ps, asked_at=0.0)  # full: a load of m4 evicts one of them
    for at in (1.0, 2.0, 3.0):
        learner.observe_request(MODELS[0], now=at)
    cold, wanted = fleet.nodes["n1"], profile(MODELS[4])
    views = Views(learner, fleet.healthy)
    start = 3.01 - epoch_offset("n1")  # just after n1's epoch turned
    first = views.bases([cold], wanted, now=start)[0].view
    demand = dict(views.demand())
    assert first.evict_s > 0
    for at in (3.1, 3.2, 3.3):  # another model becomes popular: a fleet-wide figure
        learner.observe_request(MODELS[1], now=at)
    assert views.bases([cold], wanted, now=start + EPOCH_S / 2)[0].view is first
    lease = Lease(cold, MODELS[0])  # n1's own change shows at once
    busy = views.bases([cold], wanted, now=start + EPOCH_S / 2)[0].view
    assert busy is not first and busy.in_flight == 1
    lease.end()
    later = views.bases([cold], wanted, now=start + EPOCH_S)[0].view
    assert later == node_view(cold, wanted, learner, 0, views.demand())
    assert views.demand() != demand and later.evict_s != first.evict_s


def test_the_table_holds_one_view_per_node_and_model_whatever_the_options() -> None:
    fleet, learner = fleet_of(3)
    views = Views(learner, fleet.healthy)
    nodes = list(fleet.nodes.values())
    for num_ctx in range(100, 200):  # a client trying many load-time options
        views.bases(nodes, profile(MODELS[0], num_ctx=num_ctx), now=1.0)
    entries: dict[str, dict[str, Any]] = views._entries
    assert [len(kept) for kept in entries.values()] == [len(nodes)]


def test_the_probe_is_put_on_a_copy_of_the_kept_view() -> None:
    fleet, learner = fleet_of(2)
    views = Views(learner, fleet.healthy)
    bases = views.bases(list(fleet.nodes.values()), profile(MODELS[0]), now=1.0)
    result = probed(
        bases, {"n1": Probe(cached=100, displaced=40.0)}, 1.5, 1.0, learner, profile(MODELS[0])
    )
    assert result[0] is bases[0].view
    assert (result[1].cached_tokens, result[1].displaced_tokens) == (150, 60.0)
    assert bases[1].view is not None and bases[1].view.cached_tokens == 0  # kept unchanged


def test_the_copy_with_the_probe_keeps_every_other_field() -> None:
    values = {f.name: f"{f.name}!" for f in fields(NodeView)}  # each field its own value
    view = NodeView(**values)  # type: ignore[arg-type]  # compared, never priced
    copy = with_probe(view, 7, 8.5)
    assert copy == replace(view, cached_tokens=7, displaced_tokens=8.5) and copy is not view
    assert view == NodeView(**values)  # type: ignore[arg-type]  # unchanged


def test_a_node_whose_told_slots_are_all_busy_is_priced_as_a_wait() -> None:
    """Every slot busy (reserved for requests on their way), and admission lets more in: sent
    there now, a request waits for the first slot to free, what remains of its request, never
    nothing, and finds what the probe says that slot holds."""
    fleet, learner = fleet_of(2, num_parallel=2)
    views = Views(learner, fleet.healthy)
    wanted = profile(MODELS[0])
    bases = views.bases(list(fleet.nodes.values()), wanted, now=1.0)
    service = learner.service_s("n1", MODELS[0], wanted.prompt_tokens)
    assert bases[1].view is not None and bases[1].view.num_parallel == bases[1].slots == 2

    def at(now: float) -> NodeView:
        full = {"n1": Probe(cached=100, displaced=40.0, full_since=10.0)}
        return probed(bases, full, 1.0, now, learner, wanted)[1]

    assert at(10.0 + service / 4).slot_wait_s == pytest.approx(service * 3 / 4)
    assert (at(11.0).cached_tokens, at(11.0).displaced_tokens) == (100, 40.0)
    assert at(10.0 + 5 * service).slot_wait_s == pytest.approx(0.1 * service)  # overdue: soon
    free = probed(bases, {"n1": Probe(displaced=40.0)}, 1.0, 12.0, learner, wanted)
    assert free[1].slot_wait_s is None


def test_a_node_full_by_a_growing_belief_is_priced_as_either_outcome() -> None:
    """Admission lets more in than the believed slots (it probes for more): the node may have
    a slot the proxy does not know of, where the request starts at once and finds nothing the
    proxy knows of, or not, and the request waits for the first slot to free."""
    fleet, learner = fleet_of(2)
    views = Views(learner, fleet.healthy)
    wanted = profile(MODELS[0])
    bases = views.bases(list(fleet.nodes.values()), wanted, now=1.0)
    service = learner.service_s("n1", MODELS[0], wanted.prompt_tokens)
    assert bases[1].view is not None and bases[1].view.num_parallel > bases[1].slots
    full = {"n1": Probe(cached=100, displaced=40.0, full_since=10.0)}
    view = probed(bases, full, 1.0, 10.0 + service / 4, learner, wanted)[1]
    right = 1 - GROWING_SHORT
    assert view.slot_wait_s == pytest.approx(service * 3 / 4 * right)
    assert (view.cached_tokens, view.displaced_tokens) == (round(100 * right), 40.0 * right)


def test_a_large_fleets_views_turn_over_a_few_at_a_time() -> None:
    fleet, learner = fleet_of(100)
    views = Views(learner, fleet.healthy)
    nodes, wanted = list(fleet.nodes.values()), profile(MODELS[0])
    seen = [kept.view for kept in views.bases(nodes, wanted, now=5.0)]
    remade = []
    for step in range(1, 11):  # a second, in tenths: each tenth remakes about a tenth of them
        now = 5.0 + step * EPOCH_S / 10
        views_now = [kept.view for kept in views.bases(nodes, wanted, now=now)]
        remade.append(sum(a is not b for a, b in zip(seen, views_now, strict=True)))
        seen = views_now
    assert sum(remade) == len(nodes) and max(remade) <= 25
