"""`sollol-proxy bench embed` runs end to end on a small scale (its numbers are not asserted)."""

from __future__ import annotations

from sollol_proxy.bench import embed


async def test_the_embedding_benchmark_reports_every_workload() -> None:
    report = await embed.benchmark(scale=0.03, rounds=1)
    rows = [line.split(" | ")[0].removeprefix("| ") for line in report.splitlines()[2:]]
    assert rows[:7] == [
        "(a) 1 client, calls of 16",
        "(b) 8 clients, calls of 16 (coalescing off)",
        "(b) 8 clients, calls of 16 (coalescing on)",
        "(b)",
        "(c) 32 clients, calls of 4",
        "(c) 8 clients, calls of 16",
        "(d) batch job, 300 documents",
    ]
    assert rows[7].startswith("(d) kill -9 at ") and len(rows) == 8
    # every document of the killed job ended with one result, equal to the node's own answer
    assert "equal to a direct call's | yes | 300 done, 0 failed |" in report.splitlines()[-1]
