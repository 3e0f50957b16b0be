"""The soak command: a few seconds of load with random faults, then no leaks."""

from __future__ import annotations

from click.testing import CliRunner

from sollol_proxy.bench.soak import soak
from sollol_proxy.cli import main


async def test_a_short_soak_reports_and_leaks_nothing() -> None:
    report = await soak(duration=4.0, nodes=3, clients=4, seed=2, fault_every=0.4)
    assert report.requests > 20 and report.successes > 0
    assert sum(report.faults_injected.values()) > 0
    assert report.requests == report.successes + sum(report.failures.values())
    statuses = sum(n for kind, n in report.failures.items() if kind.startswith("status "))
    assert sum(report.statuses.values()) == statuses  # each error status counted by its message
    assert report.leaked_in_flight == 0 and report.node_in_flight == 0
    assert report.leaked_slots == 0 and report.still_queued == 0
    assert report.connections_in_use == 0
    assert report.nodes_not_up == []
    text = "\n".join(report.lines())
    assert "client-visible failures" in text and "memory (RSS)" in text


def test_soak_is_a_command() -> None:
    result = CliRunner().invoke(main, ["soak", "--help"])
    assert result.exit_code == 0 and "--duration" in result.output
