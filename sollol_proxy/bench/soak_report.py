"""What a soak run reports, and how a client's answer is judged complete or failed."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field

import orjson


@dataclass
class Report:
    duration_s: float
    nodes: int
    clients: int
    requests: int = 0
    successes: int = 0
    retried_successes: int = 0  # answered after at least one failed attempt on another node
    failures: Counter[str] = field(default_factory=Counter)  # client-visible, by kind
    statuses: Counter[str] = field(default_factory=Counter)  # error statuses, by message
    faults_injected: Counter[str] = field(default_factory=Counter)
    state_changes: int = 0
    ejections: int = 0
    retries: int = 0
    retries_refused: int = 0
    mid_stream_failures: int = 0
    leaked_in_flight: int = 0  # proxy counts (in flight, per model, loads) after quiesce
    node_in_flight: int = 0  # the simulated nodes' own in-flight requests after quiesce
    leaked_slots: int = 0  # admission slots still held after quiesce
    still_queued: int = 0  # requests still waiting in the priority queue after quiesce
    connections_in_use: int = 0  # upstream connections the proxy still holds after quiesce
    connections_idle: int = 0  # kept alive in the pool (not a leak)
    nodes_not_up: list[str] = field(default_factory=list)
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0

    def lines(self) -> list[str]:
        rate = self.requests / self.duration_s if self.duration_s else 0.0
        failed = sum(self.failures.values())
        out = [
            f"soak: {self.duration_s:.0f} s, {self.nodes} simulated nodes, "
            f"{self.clients} concurrent clients",
            f"requests            {self.requests} ({rate:.1f}/s)",
            f"successes           {self.successes} ({self.retried_successes} after a retry)",
            f"client-visible failures {failed}"
            + "".join(f"\n  {kind:<22}{n}" for kind, n in sorted(self.failures.items()))
            + "".join(f"\n    {n:>5}  {why}" for why, n in self.statuses.most_common(8)),
            "faults injected     "
            + ", ".join(f"{k} {n}" for k, n in sorted(self.faults_injected.items())),
            f"node state changes  {self.state_changes} (ejections {self.ejections})",
            f"retries             {self.retries} (refused by the budget: {self.retries_refused})",
            f"mid-stream failures {self.mid_stream_failures}",
            f"after quiesce       in flight (proxy) {self.leaked_in_flight}, "
            f"slots held {self.leaked_slots}, queued {self.still_queued}, "
            f"in flight (nodes) {self.node_in_flight}, upstream connections in use "
            f"{self.connections_in_use} (idle in pool {self.connections_idle}), "
            f"nodes not up: {', '.join(self.nodes_not_up) or 'none'}",
            f"memory (RSS)        {self.rss_start_mib:.1f} MiB after warm-up -> "
            f"{self.rss_end_mib:.1f} MiB at the end "
            f"({self.rss_end_mib - self.rss_start_mib:+.1f} MiB)",
        ]
        return out


def rss_mib() -> float:
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def outcome(kind: str, status: int, body: bytes) -> str | None:
    """None for a complete answer, else the kind of failure the client saw."""
    if status != 200:
        return f"status {status}"
    if kind == "json":
        return None if orjson.loads(body).get("done") is True else "cut"
    if kind == "ndjson":
        last = orjson.loads(body.splitlines()[-1]) if body.strip() else {}
        if "error" in last:
            return "in-stream error"
        return None if last.get("done") is True else "cut"
    if b'"error"' in body:
        return "in-stream error"
    return None if body.rstrip().endswith(b"data: [DONE]") else "cut"


def status_reason(body: bytes) -> str:
    """An error answer's message with node names and numbers blanked, so that alike ones count
    together (`no Ollama node could answer (nN: answered N)`)."""
    try:
        error = orjson.loads(body).get("error", "")
    except (orjson.JSONDecodeError, AttributeError):
        return body[:80].decode(errors="replace")
    if isinstance(error, dict):  # the OpenAI envelope on /v1
        error = error.get("message", "")
    return re.sub(r"\d+(\.\d+)?", "N", str(error))[:120]
