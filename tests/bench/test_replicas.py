"""`sollol-proxy bench replicas` runs end to end (its figures are measured, not asserted)."""

from __future__ import annotations

from sollol_proxy.bench.replicas import benchmark
from tests.redisd import redis_binary


async def test_bench_replicas_reports_every_run() -> None:
    redis_binary()  # skips (or fails under CI) without redis-server
    report = await benchmark(duration=0.5, replicas=2)
    rows = [
        line for line in report.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")
    ]
    # The baseline, 1 and 2 replicas, 2 with the slots configured and 2 without Redis, for
    # both loads.
    assert len(rows) == 10, report
    assert all(row.split("|")[2].strip() == "0" for row in rows), report  # no errors
