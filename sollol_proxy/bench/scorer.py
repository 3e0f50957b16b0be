"""How long one routing decision takes: each strategy's rank() over prebuilt snapshots."""

from __future__ import annotations

import random
import time

from sollol_proxy.routing import NodeView, RouteRequest, make_strategy

STRATEGIES = ("performance", "least_loaded", "round_robin", "random")


def _views(count: int, rng: random.Random) -> list[NodeView]:
    return [
        NodeView(
            name=f"node-{i}",
            in_flight=rng.randint(0, 8),
            num_parallel=rng.choice((1, 2, 4)),
            resident=rng.random() < 0.5,
            model_in_flight=rng.randint(0, 4),
            options_match=rng.random() < 0.9,
            cached_tokens=rng.choice((0, 0, 512, 2048)),
            loads_pending=rng.randint(0, 1),
            prefill_tps=rng.uniform(500, 5000),
            decode_tps=rng.uniform(10, 120),
            load_s=rng.uniform(1, 20),
            service_s=rng.uniform(0.5, 10),
            evict_s=rng.choice((0.0, 0.0, 3.0)),
            success=rng.uniform(0.8, 1.0),
        )
        for i in range(count)
    ]


def measure(strategy_name: str, nodes: int, decisions: int, seed: int = 1) -> float:
    """Microseconds per decision."""
    rng = random.Random(seed)
    snapshots = [_views(nodes, rng) for _ in range(64)]
    strategy = make_strategy(strategy_name)
    request = RouteRequest(model="m", request_id="r", prompt_tokens=1500, expected_output=200)
    start = time.perf_counter()
    for i in range(decisions):
        strategy.rank(request, snapshots[i % len(snapshots)])
    return (time.perf_counter() - start) / decisions * 1e6


def run(decisions: int = 20000) -> None:
    print(
        "| strategy | 10 nodes (us/decision) | 100 nodes (us/decision) | 10 nodes vs least_loaded |"
    )
    print("|---|---|---|---|")
    baseline = measure("least_loaded", 10, decisions)
    for name in STRATEGIES:
        ten = baseline if name == "least_loaded" else measure(name, 10, decisions)
        hundred = measure(name, 100, max(1, decisions // 10))
        print(f"| {name} | {ten:.1f} | {hundred:.1f} | {ten / baseline:.2f}x |")
    ten = measure_selection(10, max(1, decisions // 10))
    hundred = measure_selection(100, max(1, decisions // 100))
    print(
        f"| performance, with snapshot building | {ten:.1f} | {hundred:.1f} | {ten / baseline:.2f}x |"
    )


def measure_selection(nodes: int, decisions: int, seed: int = 1) -> float:
    """Microseconds per decision including the snapshot: live node state (20 models on disk,
    3 loaded per node, requests in flight, every node's slots holding a conversation) turned
    into views, the slots probed for the prompt, demand computed, then ranked, as Selector
    does for every request."""
    from sollol_proxy.config import load_config
    from sollol_proxy.config.policies import Priors
    from sollol_proxy.fleet.capacity import model_slots
    from sollol_proxy.fleet.fleet import Fleet
    from sollol_proxy.fleet.learning import Learner
    from sollol_proxy.fleet.prompt_cache import NO_PROBE, PromptCache
    from sollol_proxy.fleet.snapshot import demand_by_model, node_view
    from sollol_proxy.routing.analysis import analyze

    rng = random.Random(seed)
    config = load_config(
        None,
        env={},
        overrides={
            "nodes": [
                {"url": f"n{i}", "name": f"n{i}", "num_parallel": 2, "vram": "24GiB"}
                for i in range(nodes)
            ],
        },
    )
    cache, learner = PromptCache(), Learner(Priors())
    fleet = Fleet(config, None, cache)  # type: ignore[arg-type]  # no probes here
    models = [f"model-{i}:latest" for i in range(20)]
    for state in fleet.nodes.values():
        state.healthy = True
        state.models = {m: {"model": m, "size": 5 * 2**30} for m in models}
        for m in rng.sample(models, 3):
            state.loaded[m] = {
                "model": m,
                "size_vram": 5 * 2**30,
                "expires_at": "2030-01-01T00:00:00Z",
            }
            state.model_in_flight[m] = rng.randint(0, 3)
        state.in_flight = sum(state.model_in_flight.values())
    for m in models:
        learner.observe_request(m)
        learner.observe_request(m)
    payload = {
        "model": models[0],
        "messages": [
            {"role": "system", "content": "s" * 4000},
            {"role": "user", "content": "hello"},
        ],
    }
    profile = analyze("/api/chat", payload, models[0], True)
    # Every node's two slots hold a conversation under one of five system prompts.
    for state in fleet.nodes.values():
        for _ in range(2):
            held = {
                **payload,
                "messages": [
                    {"role": "system", "content": f"{rng.randint(0, 4)}" * 4000},
                    {"role": "user", "content": "earlier"},
                ],
            }
            keys = analyze("/api/chat", held, models[0], True).prefix_keys
            cache.record(models[0], state.name, keys, slots=2)
    strategy = make_strategy("performance")
    candidates = list(fleet.nodes.values())
    slots = {n.name: model_slots(n, models[0]) for n in candidates}
    request = RouteRequest(
        model=models[0], request_id="r", prompt_tokens=profile.prompt_tokens, expected_output=200
    )
    start = time.perf_counter()
    for _ in range(decisions):
        probes = cache.probe(profile.model, profile.prefix_keys, slots)
        demand = demand_by_model(candidates, learner)
        views = [
            node_view(n, profile, learner, probes.get(n.name, NO_PROBE).cached, demand)
            for n in candidates
        ]
        strategy.rank(request, views)
    return (time.perf_counter() - start) / decisions * 1e6
