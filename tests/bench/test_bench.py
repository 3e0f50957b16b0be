"""The benchmarks run and report (their numbers are measured, never asserted)."""

from __future__ import annotations

import io

import orjson
import pytest

from sollol_proxy.bench import (
    bodies,
    capacity,
    capacity_runs,
    nginx,
    overhead,
    queue,
    routing,
    scorer,
    workloads,
)
from sollol_proxy.bench.selection import measure_selection


def tiny(seed: int) -> workloads.Scenario:
    node = dict(
        models=[workloads.model("llama3.2:latest", 1)],
        num_parallel=1,
        token_delay=0.001,
        prompt_tokens_per_s=50000,
    )
    sessions = [
        workloads.Session(
            system="be brief " * 50,
            questions=["a", "b"],
            model="llama3.2:latest",
            num_predict=3,
            start=0.0,
            think=0.0,
        )
    ]
    calls = [
        workloads.Call("llama3.2:latest", [{"role": "user", "content": "x"}], 3, at=0.01 * i)
        for i in range(4)
    ]
    return workloads.Scenario(
        "tiny", "a smoke test", [dict(node, name="a"), dict(node, name="b")], sessions, calls
    )


async def test_routing_benchmark_runs_every_strategy_on_the_same_workload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(workloads.SCENARIOS, "tiny", tiny)
    table = await routing.benchmark(seed=1, scenarios=["tiny"])
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith("| strategy")
    ]
    expected = [s for s in routing.STRATEGIES if s != routing.NGINX or nginx.available()]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == expected
    assert all(row.endswith("| 0 |") for row in rows)  # no errors
    assert rows[0].split(" | ")[1].endswith("(1.00)")  # round_robin is the baseline


async def test_a_scenario_counts_latencies_loads_and_cache() -> None:
    result = await routing.run_scenario(tiny(1), "performance")
    assert len(result.ttft) == len(result.total) == 6 and result.errors == 0
    assert result.loads >= 1 and result.prompt_tokens > result.cached_tokens > 0
    # The conversation's second turn finds its first turn's slot; the one-word calls cannot.
    assert result.requests == 6 and 1 <= result.hits < 6


async def test_the_routing_benchmark_writes_each_request_where_it_went_and_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(workloads.SCENARIOS, "tiny", tiny)
    out = io.BytesIO()
    await routing.benchmark(seed=1, scenarios=["tiny"], strategies=("performance",), requests=out)
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == 6 and {r["strategy"] for r in records} == {"performance"}
    assert all(r["x-sollol-node"] in ("a", "b") and r["x-sollol-route"] for r in records)
    second_turn = next(r for r in records if r["turn"] == 4)  # system, user, assistant, user
    assert second_turn["prompt_eval_count"] > 0 and second_turn["ttft"] <= second_turn["total"]


@pytest.mark.skipif(not nginx.available(), reason="nginx is not installed")
async def test_nginx_least_conn_is_measured_in_front_of_the_same_nodes() -> None:
    result = await routing.run_scenario(tiny(1), routing.NGINX)
    assert len(result.ttft) == 6 and result.errors == 0 and result.requests == 6


def test_scorer_benchmark_measures_each_strategy() -> None:
    for name in scorer.STRATEGIES:
        assert scorer.measure(name, nodes=10, decisions=50) > 0


async def test_queue_benchmark_reports_both_modes_and_both_classes() -> None:
    workload = queue.Workload(nodes=1, num_parallel=1, token_delay=0.002, tokens=5, duration=0.5)
    report = await queue.benchmark(seed=3, workload=workload)
    rows = [
        line.split(" | ")
        for line in report.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    assert [(row[0].lstrip("| "), row[1]) for row in rows[1:]] == [
        ("queue", "high"),
        ("queue", "low"),
        ("no queue", "high"),
        ("no queue", "low"),
    ]
    assert all(row[3] == "0" for row in rows[1:])  # no errors
    assert "high p95 wait / low p95 wait" in report


def test_the_time_series_keeps_nothing_per_request() -> None:
    """The dashboard's series allocate nothing per request once the ring has gone round."""
    _, allocated = overhead.series_cost(requests=40_000)
    assert allocated < 0.01


async def test_bodies_benchmark_reports_every_shape() -> None:
    table = await bodies.benchmark(2 * bodies.MIB, None)
    rows = table.splitlines()[2:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [s.name for s in bodies.SHAPES]
    assert "| 200, 200, 200 |" in rows[2]  # a long string is routed by its model


async def test_capacity_benchmark_reports_learned_slots_and_every_mode() -> None:
    workload = capacity_runs.Workload(tokens=3, token_delay=0.002, duration=0.6, warmup=0.3)
    report = await capacity.benchmark(seed=1, fleets=["mixed"], workload=workload, repeat=2)
    assert "truth [1, 2, 4]" in report and "pools 2 runs (seeds 1-2)" in report
    assert "3 tokens at 2 ms per answer" in report
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| ")]
    runs = [row[0].lstrip("| ") for row in rows if not row[0].startswith("| run")]
    assert runs == [*capacity_runs.MODES, *capacity_runs.MODES]  # whole run, then after the warm-up
    told = next(row for row in rows if row[0] == "| told")
    assert told[3].endswith("(1.00)")  # the reference
    # The last column is what was waited on the slot semaphores in the table's period.
    waited = [float(row[-1].rstrip(" |")) for row in rows if not row[0].startswith("| run")]
    whole, after = waited[: len(capacity_runs.MODES)], waited[len(capacity_runs.MODES) :]
    assert all(0.0 <= late <= total for late, total in zip(after, whole, strict=True))
    per_run = [line for line in report.splitlines() if line.startswith("no queue ")]
    assert len(per_run) == 1 and per_run[0].count(", ") == 1  # one ratio per seed
    # The targets are read against the noise: told run twice per seed (A/A).
    assert "Targets after 0.3 s (auto against told; A/A = told again against told):" in report
    assert "- total p95 within 5 %: auto " in report and "- TTFT p95 never above" in report


async def test_capacity_benchmark_shows_how_long_the_restarted_node_was_out() -> None:
    # Whether a connection lands while the node restarts (and ejects it for seconds) is chance,
    # run by run: the report shows it beside the ratios.
    workload = capacity_runs.Workload(tokens=3, token_delay=0.002, duration=1.0, warmup=0.5)
    report = await capacity.benchmark(seed=1, fleets=["restart"], workload=workload)
    lines = report.splitlines()
    at = lines.index("Seconds the restarted node was out of rotation, run by run:")
    rows = [line.rsplit(" ", 1) for line in lines[at + 1 : at + 1 + len(capacity_runs.MODES)]]
    assert [mode for mode, _ in rows] == list(capacity_runs.MODES)
    assert all(float(seconds) >= 0.0 for _, seconds in rows[:4])  # the proxy's modes
    assert (rows[4][1] == "n/a") == nginx.available()  # nginx's own health is not read


def test_capacity_command_sets_the_tokens_per_answer() -> None:
    # --tokens sets how long a request holds its slot (tokens x 10 ms).
    from click.testing import CliRunner

    from sollol_proxy.bench.cli import bench

    args = ["capacity", "--fleet", "all4", "--tokens", "2", "--duration", "0.4", "--warmup", "0.2"]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    assert "2 tokens at 10 ms per answer" in result.output


def test_convergence_is_when_the_beliefs_stay_right() -> None:
    beliefs = [(0.0, (1, 1)), (0.5, (1, 2)), (1.0, (1, 1)), (1.5, (1, 2)), (2.0, (1, 2))]
    assert capacity_runs.converged(beliefs, (1, 2), 0.0, 10.0) == 1.5
    assert capacity_runs.converged(beliefs, (1, 3), 0.0, 10.0) is None


async def test_the_whole_selection_and_its_bookkeeping_are_measured() -> None:
    cost = await measure_selection(nodes=10, decisions=20)
    assert cost.selection > 0 and cost.bookkeeping > 0


async def test_overhead_compares_both_engines_in_one_run() -> None:
    table = await overhead.benchmark(rounds=1, scale=0.02, engines=("fast", "aiohttp"))
    rows = [row for row in table.splitlines() if row.startswith("|")]
    header = rows[0]
    assert "sollol-proxy (fast) p50 / p99 ms" in header
    assert "sollol-proxy (aiohttp) p50 / p99 ms" in header
    assert "fast CPU" in header and "aiohttp CPU" in header
    assert len(rows) == 2 + 4 and len({row.count("|") for row in rows}) == 1
    # What each proxy believed of the node's slots, which decides whether requests queue in it.
    assert (
        "Slots of the node's 16 the proxy believed (given its URL only): sollol-proxy (fast) "
        in table
    )


def test_the_ratio_to_nginx_is_the_median_of_the_rounds_ratios() -> None:
    proxy, nginx_ = overhead.Sample(), overhead.Sample()
    # Round 2 was slow for both (a busy machine) and is still 10x; in round 3 nginx alone was
    # fast, which the median leaves out.
    proxy.rounds = [(0.4, 400), (1.2, 400), (0.6, 400)]
    nginx_.rounds = [(0.04, 400), (0.12, 400), (0.02, 400)]
    assert overhead._ratio(proxy, nginx_) == "10.0x (10.0-30.0)"
    assert overhead._ratio(proxy, overhead.Sample(rounds=[(0.0, 400)] * 3)) == "-"
