"""Several replicas of the proxy sharing state in Redis, against one, on the same fleet.

The same seeded open-loop arrivals (`bench queue`'s: 20% priority 9, 80% priority 2) are sent
round-robin over 1, 2 and 3 `sollol-proxy` processes sharing a real `redis-server`
(`state.redis_url`), and to one process without Redis as the baseline; the nodes are simulated
in this process and given as URLs only (zero configuration: each replica learns the slots).
Two loads: below capacity (latency p50/p95, throughput: what sharing costs) and above it
(priority separation: the high class's p95 wait against the low class's). Also per run: the
most requests any node had in flight at once and the most that held or waited for its slots
(its slot demand: without the ones loading a model or writing their final object after their
slot was freed), against its slots, sampled every 2 ms; and the Redis round trips and their
time per request, read from each replica's `/metrics`.

All processes share this machine's cores: the replicas add no CPU here, so the figures show what
sharing costs and whether it keeps the fleet's limits and priorities, not a speed-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from sollol_proxy.bench.queue import (
    CLASSES,
    MODEL,
    ClassResult,
    Workload,
    _send,
    _throughput,
    arrivals,
    start_nodes,
)
from sollol_proxy.bench.routing import _q
from sollol_proxy.bench.scale import _cpu_seconds, _free_port, proxy_process
from sollol_proxy.bench.tasks import stop
from sollol_proxy.simulator import SimulatedNode

ROUND_TRIPS = re.compile(rb"^sollol_shared_round_trips_total ([0-9.e+]+)$", re.M)
ROUND_TRIP_S = re.compile(rb"^sollol_shared_round_trip_seconds_total ([0-9.e+]+)$", re.M)
REQUEST_TRIPS = re.compile(rb"^sollol_shared_request_round_trips_total ([0-9.e+]+)$", re.M)
REFUSED = re.compile(rb'^sollol_shared_leases_total\{result="refused"\} ([0-9.e+]+)$', re.M)
HANDED = re.compile(rb'^sollol_shared_leases_total\{result="handed"\} ([0-9.e+]+)$', re.M)
KINDS = re.compile(
    rb'^sollol_shared_request_round_trips_by_kind_total\{carrying="([^"]*)"\} ([0-9.e+]+)$', re.M
)


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench replicas needs redis-server (Debian: apt-get install redis-server)")
    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        try:
            yield f"redis://127.0.0.1:{port}/0", process.pid
        finally:
            process.terminate()
            process.wait()


@dataclass
class Run:
    label: str
    results: dict[str, ClassResult]
    peak: tuple[int, int]  # most requests a node had in flight, and most of its slot demand
    round_trips: float  # to Redis, per request
    request_trips: float  # of them, those of the requests' path (not the periodic exchanges)
    round_trip_ms: float  # time in them, per request
    refused: float  # leases Redis refused, per request (a request then waits and asks again)
    handed: float  # slots a release handed to a waiting request, per request
    # The requests' path's round trips per request, by what they carried (`lease_ops.carried`).
    kinds: dict[str, float]
    # CPU seconds per request of the proxies, of Redis and of this process (clients and
    # simulated nodes), and the share of the machine's cores busy (everyone's work) in the run.
    cpu_ms: tuple[float, float, float]
    busy: float


async def _peak(nodes: list[SimulatedNode], seen: list[int]) -> None:
    while True:
        seen[0] = max(seen[0], *(n.in_flight() for n in nodes))
        seen[1] = max(seen[1], *(n.slot_demand() for n in nodes))
        await asyncio.sleep(0.002)


async def _redis_cost(urls: list[str]) -> tuple[list[float], dict[str, float]]:
    totals = [0.0] * 5
    kinds: dict[str, float] = {}
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(url + "/metrics") as response:
                text = await response.read()
            for index, pattern in enumerate(
                (ROUND_TRIPS, ROUND_TRIP_S, REQUEST_TRIPS, REFUSED, HANDED)
            ):
                if match := pattern.search(text):
                    totals[index] += float(match.group(1))
            for kind, count in KINDS.findall(text):
                kinds[kind.decode()] = kinds.get(kind.decode(), 0.0) + float(count)
    return totals, kinds


@contextlib.asynccontextmanager
async def _replicas(
    count: int, settings: dict[str, object]
) -> AsyncIterator[list[tuple[int, str]]]:
    async with contextlib.AsyncExitStack() as stack:
        started = [await stack.enter_async_context(proxy_process(settings)) for _ in range(count)]
        urls = [url for _, url in started]
        async with aiohttp.ClientSession() as http:  # every replica sees the model first
            for url in urls:
                for _ in range(400):
                    async with http.get(url + "/sollol/nodes") as response:
                        nodes = (await response.json())["nodes"]
                    if all(MODEL in n["models"] for n in nodes):
                        break
                    await asyncio.sleep(0.05)
        yield started


def _machine() -> tuple[int, int]:
    """Busy and total jiffies of all the machine's cores since boot (/proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


@dataclass(frozen=True)
class Setup:
    """One row: how many replicas, whether they share Redis, and how they know the slots."""

    label: str
    count: int
    redis: bool
    told: int | None = None  # each replica is told the nodes have this many slots (else URLs)
    real: int | None = None  # the simulated nodes' real slots, when not the workload's


async def run_once(setup: Setup, redis: tuple[str, int], workload: Workload, seed: int) -> Run:
    count = setup.count
    real = workload if setup.real is None else replace(workload, num_parallel=setup.real)
    nodes = await start_nodes(real)
    entries: list[object] = [
        n.url if setup.told is None else {"url": n.url, "num_parallel": setup.told} for n in nodes
    ]
    # Every client is this process: its requests waiting in an overload are many connections.
    settings: dict[str, object] = {
        "nodes": entries,
        "limits": {"max_connections_per_client": 10_000},
    }
    if setup.redis:
        settings["state"] = {"redis_url": redis[0]}
    results = {cls: ClassResult() for cls in CLASSES}
    seen = [0, 0]
    try:
        async with (
            _replicas(count, settings) as started,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
        ):
            urls = [url for _, url in started]
            before, kinds0 = await _redis_cost(urls)
            watcher = asyncio.create_task(_peak(nodes, seen))
            pids = [pid for pid, _ in started]
            cpu0 = (sum(map(_cpu_seconds, pids)), _cpu_seconds(redis[1]), time.process_time())
            machine0 = _machine()
            t0 = time.perf_counter()

            async def timed(index: int, at: float, cls: str) -> None:
                await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
                await _send(http, urls[index % count], workload, cls, results[cls])

            calls = arrivals(workload, seed)
            await asyncio.gather(*(timed(i, at, cls) for i, (at, cls) in enumerate(calls)))
            await stop(watcher)
            machine1 = _machine()
            cpu1 = (sum(map(_cpu_seconds, pids)), _cpu_seconds(redis[1]), time.process_time())
            after, kinds1 = await _redis_cost(urls)
    finally:
        for node in nodes:
            await node.stop()
    for result in results.values():
        result.last_done -= t0
    requests = len(calls)
    return Run(
        setup.label,
        results,
        (seen[0], seen[1]),
        (after[0] - before[0]) / requests,
        (after[2] - before[2]) / requests,
        (after[1] - before[1]) * 1000 / requests,
        (after[3] - before[3]) / requests,
        (after[4] - before[4]) / requests,
        {
            k: (n - kinds0.get(k, 0.0)) / requests
            for k, n in kinds1.items()
            if n > kinds0.get(k, 0.0)
        },
        (
            (cpu1[0] - cpu0[0]) * 1000 / requests,
            (cpu1[1] - cpu0[1]) * 1000 / requests,
            (cpu1[2] - cpu0[2]) * 1000 / requests,
        ),
        (machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1),
    )


def _all(run: Run) -> ClassResult:
    merged = ClassResult()
    for result in run.results.values():
        merged.waits += result.waits
        merged.totals += result.totals
        merged.errors += result.errors
        merged.queued_ms += result.queued_ms
        merged.last_done = max(merged.last_done, result.last_done)
    return merged


# A round trip is counted under the first of these its operations include (`lease_ops.carried`):
# a request's first grant, a repeated one (after a refusal or a wait), a release, or only
# operations sent lazily (a handed slot taken or given back, a waiter registered or leaving).
GROUPS = ("grant", "regrant", "release")


def _grouped(kinds: dict[str, float]) -> dict[str, float]:
    groups = dict.fromkeys((*GROUPS, "lazy only"), 0.0)
    for kind, count in kinds.items():
        parts = kind.split("+")
        group = next((g for g in GROUPS if g in parts), "lazy only")
        groups[group] += count
    return groups


def setups(replicas: int) -> list[Setup]:
    """The rows: one replica without Redis (the baseline), 1..`replicas` sharing Redis with
    the slots learned (zero configuration), then the same largest count with the slots
    configured (no learning: what the sharing itself costs), and without Redis on nodes with
    that many times the slots, each replica told its share (no sharing, no overcommit, nobody
    waits longer than with the pooled slots: what the extra processes cost on this machine)."""
    rows = [Setup("1 replica, no Redis", 1, False)]
    for count in range(1, replicas + 1):
        rows.append(Setup(f"{count} replica{'s' if count > 1 else ''}, Redis", count, True))
    if replicas > 1:
        slots = Workload().num_parallel
        rows += [
            Setup(f"{replicas} replicas, Redis, slots configured", replicas, True, told=slots),
            Setup(
                f"{replicas} replicas, no Redis, each told {slots} of a node's {slots * replicas}",
                replicas,
                False,
                told=slots,
                real=slots * replicas,
            ),
        ]
    return rows


async def benchmark(seed: int = 7, duration: float = 10.0, replicas: int = 3) -> str:
    workloads = {"below capacity": 0.6, "overload": 2.0}
    lines = []
    with redis_server() as redis:
        for name, load in workloads.items():
            workload = Workload(load=load, duration=duration)
            runs = [await run_once(setup, redis, workload, seed) for setup in setups(replicas)]
            lines += [
                f"**{name}**: {workload.nodes} nodes x {workload.num_parallel} slots, "
                f"offered {workload.capacity * load:.0f} req/s for {duration:g}s "
                f"({len(arrivals(workload, seed))} requests); seconds",
                "",
                "| run | errors | latency p50 | latency p95 | completed/s | high wait p95 | "
                "low wait p95 | high/low | queued p95 (ms) | node peak / slot demand / slots | Redis "
                "trips/request (requests' path) | Redis ms/request | refused/request | "
                "handed/request | CPU ms/request: proxies, Redis, bench | machine busy |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            base = _all(runs[0])
            for run in runs:
                merged = _all(run)
                high = _q(run.results["high"].waits, 95)
                low = _q(run.results["low"].waits, 95)
                queued = _q(merged.queued_ms, 95) if merged.queued_ms else 0.0
                proxies, redis_ms, bench = run.cpu_ms
                lines.append(
                    f"| {run.label} | {merged.errors} | {_q(merged.totals, 50):.3f} | "
                    f"{_q(merged.totals, 95):.3f} ({_q(merged.totals, 95) / _q(base.totals, 95):.2f}x) "
                    f"| {_throughput(merged):.1f} ({_throughput(merged) / _throughput(base):.2f}x) "
                    f"| {high:.3f} | {low:.3f} | {high / low:.2f} | {queued:.0f} | {run.peak[0]} / {run.peak[1]} / "
                    f"{workload.num_parallel} | {run.round_trips:.2f} ({run.request_trips:.2f}) | "
                    f"{run.round_trip_ms:.2f} | {run.refused:.2f} | {run.handed:.2f} | "
                    f"{proxies:.1f}, {redis_ms:.1f}, {bench:.1f} | {run.busy:.0%} |"
                )
            lines.append("")
            lines.append(
                "Round trips of the requests' path per request, by what they carried (a trip "
                "counts under the first of: a first grant, a repeated grant, a release, lazy "
                "writes only):"
            )
            lines.append("")
            for run in runs[1:]:
                if run.kinds:
                    groups = _grouped(run.kinds)
                    lines.append(
                        f"- {run.label}: " + ", ".join(f"{k} {n:.2f}" for k, n in groups.items())
                    )
            lines.append("")
    return "\n".join(lines)


def run(seed: int = 7, duration: float = 10.0, replicas: int = 3) -> None:
    print(asyncio.run(benchmark(seed, duration, replicas)))
