"""How long one routing decision takes: each strategy's rank() over prebuilt snapshots, and the
whole selection of `performance` for one request (selection.py)."""

from __future__ import annotations

import asyncio
import random
import time

from sollol_proxy.bench.selection import measure_selection
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
    """Microseconds of CPU per decision."""
    rng = random.Random(seed)
    snapshots = [_views(nodes, rng) for _ in range(64)]
    strategy = make_strategy(strategy_name)
    request = RouteRequest(model="m", request_id="r", prompt_tokens=1500, expected_output=200)
    start = time.thread_time()
    for i in range(decisions):
        strategy.rank(request, snapshots[i % len(snapshots)])
    return (time.thread_time() - start) / decisions * 1e6


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
    # Issue #12's targets are for nodes given as URLs only; the configured row for comparison.
    ten = asyncio.run(measure_selection(10, max(1, decisions // 10)))
    hundred = asyncio.run(measure_selection(100, max(1, decisions // 100)))
    told = [
        asyncio.run(measure_selection(n, max(1, decisions // n), configured=True)).selection
        for n in (10, 100)
    ]
    rows = (
        ("whole selection, URLs only", ten.selection, hundred.selection),
        ("whole selection, slots and memory configured", *told),
        ("its dispatch and end, bookkeeping", ten.bookkeeping, hundred.bookkeeping),
    )
    for label, at_ten, at_hundred in rows:
        print(
            f"| performance, {label} | {at_ten:.1f} | {at_hundred:.1f} | {at_ten / baseline:.2f}x |"
        )
