"""What a strategy's TTFT tail on the routing benchmark is made of, and issue #18's targets, read
from the per-request records `bench routing --requests FILE` writes (one JSON line per request).

Per run (a workload and a seed), the slowest 5% of a strategy's requests are each put in one
class: a conversation's first turn (nothing of it can be cached but a group's system prompt), a
hit that waited in the proxy (more than 10% of its prompt cached, over 100 ms in the proxy's
queue), a miss (10% or less cached), or another hit. For the hits that waited: how long, how many
prompt tokens they still had to prefill (their own history, when the group's other conversations
had overwritten it), and how many slots of the other nodes were idle halfway through the wait
(from every request's time in its node: its start plus its queue time, to its last byte). The
cached part of a prompt is Ollama's `prompt_eval_count` less `prompt_eval_duration` times the
simulated node's prefill speed.

The targets are the issue's: TTFT p95 at most 0.6x round robin's and 0.7x least connections'
(the better of `least_loaded` and `nginx_least_conn` in the same run), p50 at most 0.4x round
robin's, prompt tokens cached at least 70%, requests per second not below round robin's.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from sollol_proxy.simulator.kvcache import SLOT_PROMPT_SIMILARITY

Record = dict[str, Any]
# A hit that spent longer than this in the proxy's queue counts as one that waited there.
WAITED_S = 0.1
LEAST_CONNECTIONS = ("least_loaded", "nginx_least_conn")


def quantile(values: Sequence[float], q: int) -> float:
    """The benchmark table's percentile (bench/routing.py `_q`)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def runs(lines: Iterable[bytes]) -> dict[tuple[str, int, str], list[Record]]:
    """(scenario, seed, strategy) -> its records, from the JSON lines of one or more files."""
    result: dict[tuple[str, int, str], list[Record]] = {}
    for line in lines:
        if line.strip():
            record = orjson.loads(line)
            key = (record["scenario"], record["seed"], record["strategy"])
            result.setdefault(key, []).append(record)
    return result


def cached(record: Record, prefill_tps: float) -> float:
    """Prompt tokens the node found cached: the whole prompt less what it evaluated."""
    count = record.get("prompt_eval_count") or 0
    duration = (record.get("prompt_eval_duration") or 0) / 1e9
    return max(count - duration * prefill_tps, 0.0)


def queued_s(record: Record) -> float:
    return int(record.get("x-sollol-queue-ms") or 0) / 1000


@dataclass
class Tail:
    """The slowest 5% of one run, by class; for the hits that waited in the proxy, each one's
    wait, the prompt tokens it still prefilled and the other nodes' idle slots mid-wait."""

    size: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    waits_s: list[float] = field(default_factory=list)
    prefilled: list[int] = field(default_factory=list)
    idle_elsewhere: list[int] = field(default_factory=list)


def tail(records: Sequence[Record], prefill_tps: float, slots: int) -> Tail:
    """Classify the slowest 5% of `records` (one strategy's run on nodes of `slots` slots)."""
    size = max(1, round(len(records) * 0.05))
    # Each request's time in its node: from leaving the proxy's queue to its last byte.
    busy = [
        (r["start"] + queued_s(r), r["start"] + r["total"], r["x-sollol-node"]) for r in records
    ]
    nodes = {node for _, _, node in busy}
    result = Tail(size)
    for record in sorted(records, key=lambda r: -r["ttft"])[:size]:
        count = record.get("prompt_eval_count") or 0
        found = cached(record, prefill_tps)
        hit = found > SLOT_PROMPT_SIMILARITY * count
        if record["turn"] <= 2:  # the system prompt and the first question
            kind = "first turn"
        elif hit and queued_s(record) > WAITED_S:
            kind = "hit after waiting"
            mid = record["start"] + queued_s(record) / 2
            result.waits_s.append(queued_s(record))
            result.prefilled.append(round(count - found))
            result.idle_elsewhere.append(
                sum(
                    max(0, slots - sum(1 for a, b, n in busy if n == node and a <= mid < b))
                    for node in nodes
                    if node != record["x-sollol-node"]
                )
            )
        elif hit:
            kind = "hit"
        else:
            kind = "miss"
        result.classes[kind] += 1
    return result


@dataclass
class Targets:
    """One run of a strategy against issue #18's targets (ratios; None: no baseline run)."""

    p95_rr: float
    p95_lc: float | None
    p50_rr: float
    cached: float
    rate_rr: float

    @property
    def met(self) -> dict[str, bool]:
        return {
            "TTFT p95 <= 0.6x round robin": self.p95_rr <= 0.6,
            "TTFT p95 <= 0.7x least connections": self.p95_lc is not None and self.p95_lc <= 0.7,
            "TTFT p50 <= 0.4x round robin": self.p50_rr <= 0.4,
            "prompt tokens cached >= 70%": self.cached >= 0.7,
            "requests/s >= round robin": self.rate_rr >= 1.0,
        }


def rate(records: Sequence[Record]) -> float:
    """Requests answered per second, from the first start to the last answer."""
    first = min(r["start"] for r in records)
    last = max(r["start"] + r["total"] for r in records)
    return len(records) / (last - first) if last > first else 0.0


def targets(run: dict[str, list[Record]], strategy: str, prefill_tps: float) -> Targets | None:
    """`strategy`'s run against round robin's and least connections' of the same run."""
    mine, base = run.get(strategy), run.get("round_robin")
    if not mine or not base:
        return None
    ttft = [r["ttft"] for r in mine]
    others = [quantile([r["ttft"] for r in run[s]], 95) for s in LEAST_CONNECTIONS if run.get(s)]
    prompt = sum(r.get("prompt_eval_count") or 0 for r in mine)
    return Targets(
        p95_rr=quantile(ttft, 95) / quantile([r["ttft"] for r in base], 95),
        p95_lc=quantile(ttft, 95) / min(others) if others else None,
        p50_rr=quantile(ttft, 50) / quantile([r["ttft"] for r in base], 50),
        cached=sum(cached(r, prefill_tps) for r in mine) / prompt if prompt else 0.0,
        rate_rr=rate(mine) / rate(base),
    )


def node_facts(scenario: str, seed: int) -> tuple[float, int]:
    """The simulated nodes' prefill speed and slots in `scenario` (all alike in the crowded
    workloads)."""
    from sollol_proxy.bench.workloads import SCENARIOS

    spec = SCENARIOS[scenario](seed).nodes[0]
    return float(spec.get("prompt_tokens_per_s", 6000)), int(spec.get("num_parallel", 1))


def report(lines: Iterable[bytes], strategy: str = "performance") -> str:
    """The targets per run, and the slowest 5% of `strategy` in each, as markdown."""
    by_run: dict[tuple[str, int], dict[str, list[Record]]] = {}
    for (scenario, seed, name), records in runs(lines).items():
        by_run.setdefault((scenario, seed), {})[name] = records
    out = [
        "| workload | seed | p95/rr | p95/lc | p50/rr | cached | req/s / rr | targets met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tails = [
        "",
        "| workload | seed | slowest 5% | waits (s) | still prefilled | idle slots elsewhere |",
    ]
    tails.append("|---|---|---|---|---|---|")
    for (scenario, seed), run in sorted(by_run.items()):
        speed, slots = node_facts(scenario, seed)
        got = targets(run, strategy, speed)
        if got is not None:
            met = got.met
            lc = "-" if got.p95_lc is None else f"{got.p95_lc:.2f}"
            out.append(
                f"| {scenario} | {seed} | {got.p95_rr:.2f} | {lc} | {got.p50_rr:.2f} "
                f"| {got.cached:.0%} | {got.rate_rr:.2f} | {sum(met.values())} of {len(met)} |"
            )
        if run.get(strategy):
            found = tail(run[strategy], speed, slots)
            classes = ", ".join(f"{k} {v}" for k, v in found.classes.most_common())
            waits = " ".join(f"{w:.2f}" for w in sorted(found.waits_s))
            tails.append(
                f"| {scenario} | {seed} | {found.size}: {classes} | {waits} "
                f"| {' '.join(map(str, sorted(found.prefilled)))} "
                f"| {' '.join(map(str, found.idle_elsewhere))} |"
            )
    return "\n".join(out + tails)
