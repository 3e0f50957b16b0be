"""Reading the routing benchmark's per-request records (bench/routing_tail.py)."""

from __future__ import annotations

from typing import Any

import orjson
from click.testing import CliRunner

from sollol_proxy.bench import routing_tail
from sollol_proxy.cli import main

SPEED = 6000.0  # the crowded workloads' prefill, tokens/s


def record(
    strategy: str,
    start: float,
    ttft: float,
    *,
    node: str = "n0",
    turn: int = 4,
    prompt: int = 3000,
    evaluated: int = 3000,
    queue_ms: int = 0,
    total: float | None = None,
) -> dict[str, Any]:
    return {
        "scenario": "shared_prompts",
        "seed": 7,
        "strategy": strategy,
        "start": start,
        "ttft": ttft,
        "total": ttft + 0.1 if total is None else total,
        "turn": turn,
        "x-sollol-node": node,
        "x-sollol-queue-ms": str(queue_ms),
        "prompt_eval_count": prompt,
        "prompt_eval_duration": round(evaluated / SPEED * 1e9),
    }


def slowest_kinds() -> list[dict[str, Any]]:
    """20 fast hits on n1 and n2, then the slowest (5% of 20 is one) each kind in turn."""
    return [
        record("performance", i * 0.5, 0.05, node=f"n{1 + i % 2}", evaluated=100) for i in range(19)
    ]


def test_the_slowest_are_classed_and_a_wait_shows_the_idle_slots_elsewhere() -> None:
    # A hit that waited 0.4 s in the proxy, then prefilled 1,200 tokens of its own history,
    # while n1 ran one request and n2 none: three of the other nodes' four slots were idle.
    waited = record("performance", 1.0, 0.8, queue_ms=400, evaluated=1200, total=1.0)
    running = record("performance", 1.1, 0.05, node="n1", evaluated=100, total=0.3)
    found = routing_tail.tail([*slowest_kinds(), running, waited], SPEED, slots=2)
    assert found.size == 1 and found.classes == {"hit after waiting": 1}
    assert found.waits_s == [0.4] and found.prefilled == [1200]
    assert found.idle_elsewhere == [3]

    first = record("performance", 1.0, 0.8, turn=2)
    miss = record("performance", 1.0, 0.8, evaluated=2900)
    hit = record("performance", 1.0, 0.8, evaluated=1200, queue_ms=50)
    for slow, kind in ((first, "first turn"), (miss, "miss"), (hit, "hit")):
        assert routing_tail.tail([*slowest_kinds(), slow], SPEED, 2).classes == {kind: 1}


def test_a_run_is_measured_against_each_target() -> None:
    # Each strategy's last answer 1 s after its last start: the same requests/s.
    run = {
        name: [record(name, i, base + i * step, evaluated=600, total=1) for i in range(20)]
        for name, base, step in (
            ("round_robin", 0.5, 0.01),
            ("least_loaded", 0.4, 0.01),
            ("nginx_least_conn", 0.45, 0.01),
            ("performance", 0.1, 0.005),
        )
    }
    got = routing_tail.targets(run, "performance", SPEED)
    assert got is not None
    p95 = routing_tail.quantile([0.1 + i / 200 for i in range(20)], 95)
    assert got.p95_rr == p95 / routing_tail.quantile([0.5 + i / 100 for i in range(20)], 95)
    assert got.p95_lc == p95 / routing_tail.quantile([0.4 + i / 100 for i in range(20)], 95)
    assert abs(got.cached - 0.8) < 1e-6 and got.rate_rr == 1.0
    assert got.met == {
        "TTFT p95 <= 0.6x round robin": True,
        "TTFT p95 <= 0.7x least connections": True,
        "TTFT p50 <= 0.4x round robin": True,
        "prompt tokens cached >= 70%": True,
        "requests/s >= round robin": True,
    }
    assert routing_tail.targets({"performance": run["performance"]}, "performance", SPEED) is None


def test_the_command_reads_the_files_bench_routing_writes(tmp_path: Any) -> None:
    lines = [record("round_robin", i, 0.5, total=1) for i in range(20)]
    lines += [record("performance", i, 0.1, evaluated=600, total=1) for i in range(20)]
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    result = CliRunner().invoke(main, ["bench", "routing-tail", str(path)])
    assert result.exit_code == 0, result.output
    assert "| shared_prompts | 7 | 0.20 | - | 0.20 | 80% | 1.00 | 4 of 5 |" in result.output
    assert "| shared_prompts | 7 | 1: hit 1 |" in result.output
