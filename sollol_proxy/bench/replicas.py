"""Several replicas of the proxy sharing state in Redis, against one, on the same fleet.

The same seeded open-loop arrivals (`bench queue`'s: 20% priority 9, 80% priority 2) are sent
round-robin over 1, 2 and 3 `sollol-proxy` processes sharing a real `redis-server`
(`state.redis_url`), and to one process without Redis as the baseline; the nodes are simulated
in this process and given as URLs only (zero configuration: each replica learns the slots).
Two loads: below capacity (latency p50/p95, throughput: what sharing costs) and above it
(priority separation: the high class's p95 wait against the low class's). Also per run: the
most requests any node ran at once against its slots (sampled every 2 ms), and the Redis round
trips and their time per request, read from each replica's `/metrics`.

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
from dataclasses import dataclass

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
from sollol_proxy.bench.scale import _free_port, proxy_process
from sollol_proxy.simulator import SimulatedNode

ROUND_TRIPS = re.compile(rb"^sollol_shared_round_trips_total ([0-9.e+]+)$", re.M)
ROUND_TRIP_S = re.compile(rb"^sollol_shared_round_trip_seconds_total ([0-9.e+]+)$", re.M)
REQUEST_TRIPS = re.compile(rb"^sollol_shared_request_round_trips_total ([0-9.e+]+)$", re.M)
REFUSED = re.compile(rb'^sollol_shared_leases_total\{result="refused"\} ([0-9.e+]+)$', re.M)
HANDED = re.compile(rb'^sollol_shared_leases_total\{result="handed"\} ([0-9.e+]+)$', re.M)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
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
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait()


@dataclass
class Run:
    label: str
    results: dict[str, ClassResult]
    peak: int  # most requests a node ran at once
    round_trips: float  # to Redis, per request
    request_trips: float  # of them, those of the requests' path (not the periodic exchanges)
    round_trip_ms: float  # time in them, per request
    refused: float  # leases Redis refused, per request (a request then waits and asks again)
    handed: float  # slots a release handed to a waiting request, per request


async def _peak(nodes: list[SimulatedNode], seen: list[int]) -> None:
    while True:
        seen[0] = max(seen[0], *(n.in_flight() for n in nodes))
        await asyncio.sleep(0.002)


async def _redis_cost(urls: list[str]) -> list[float]:
    totals = [0.0] * 5
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(url + "/metrics") as response:
                text = await response.read()
            for index, pattern in enumerate(
                (ROUND_TRIPS, ROUND_TRIP_S, REQUEST_TRIPS, REFUSED, HANDED)
            ):
                if match := pattern.search(text):
                    totals[index] += float(match.group(1))
    return totals


@contextlib.asynccontextmanager
async def _replicas(count: int, settings: dict[str, object]) -> AsyncIterator[list[str]]:
    async with contextlib.AsyncExitStack() as stack:
        urls = [(await stack.enter_async_context(proxy_process(settings)))[1] for _ in range(count)]
        async with aiohttp.ClientSession() as http:  # every replica sees the model first
            for url in urls:
                for _ in range(400):
                    async with http.get(url + "/sollol/nodes") as response:
                        nodes = (await response.json())["nodes"]
                    if all(MODEL in n["models"] for n in nodes):
                        break
                    await asyncio.sleep(0.05)
        yield urls


async def run_once(label: str, count: int, redis: str | None, workload: Workload, seed: int) -> Run:
    nodes = await start_nodes(workload)
    # Every client is this process: its requests waiting in an overload are many connections.
    settings: dict[str, object] = {
        "nodes": [n.url for n in nodes],
        "limits": {"max_connections_per_client": 10_000},
    }
    if redis is not None:
        settings["state"] = {"redis_url": redis}
    results = {cls: ClassResult() for cls in CLASSES}
    seen = [0]
    try:
        async with (
            _replicas(count, settings) as urls,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
        ):
            before = await _redis_cost(urls)
            watcher = asyncio.create_task(_peak(nodes, seen))
            t0 = time.perf_counter()

            async def timed(index: int, at: float, cls: str) -> None:
                await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
                await _send(http, urls[index % count], workload, cls, results[cls])

            calls = arrivals(workload, seed)
            await asyncio.gather(*(timed(i, at, cls) for i, (at, cls) in enumerate(calls)))
            watcher.cancel()
            after = await _redis_cost(urls)
    finally:
        for node in nodes:
            await node.stop()
    for result in results.values():
        result.last_done -= t0
    requests = len(calls)
    return Run(
        label,
        results,
        seen[0],
        (after[0] - before[0]) / requests,
        (after[2] - before[2]) / requests,
        (after[1] - before[1]) * 1000 / requests,
        (after[3] - before[3]) / requests,
        (after[4] - before[4]) / requests,
    )


def _all(run: Run) -> ClassResult:
    merged = ClassResult()
    for result in run.results.values():
        merged.waits += result.waits
        merged.totals += result.totals
        merged.errors += result.errors
        merged.last_done = max(merged.last_done, result.last_done)
    return merged


async def benchmark(seed: int = 7, duration: float = 10.0, replicas: int = 3) -> str:
    workloads = {"below capacity": 0.6, "overload": 2.0}
    lines = []
    with redis_server() as redis:
        for name, load in workloads.items():
            workload = Workload(load=load, duration=duration)
            runs = [await run_once("1 replica, no Redis", 1, None, workload, seed)]
            for count in range(1, replicas + 1):
                label = f"{count} replica{'s' if count > 1 else ''}, Redis"
                runs.append(await run_once(label, count, redis, workload, seed))
            lines += [
                f"**{name}**: {workload.nodes} nodes x {workload.num_parallel} slots (learned), "
                f"offered {workload.capacity * load:.0f} req/s for {duration:g}s "
                f"({len(arrivals(workload, seed))} requests); seconds",
                "",
                "| run | errors | latency p50 | latency p95 | completed/s | high wait p95 | "
                "low wait p95 | high/low | node peak / slots | Redis trips/request (requests' "
                "path) | Redis ms/request | refused/request | handed/request |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            base = _all(runs[0])
            for run in runs:
                merged = _all(run)
                high = _q(run.results["high"].waits, 95)
                low = _q(run.results["low"].waits, 95)
                lines.append(
                    f"| {run.label} | {merged.errors} | {_q(merged.totals, 50):.3f} | "
                    f"{_q(merged.totals, 95):.3f} ({_q(merged.totals, 95) / _q(base.totals, 95):.2f}x) "
                    f"| {_throughput(merged):.1f} ({_throughput(merged) / _throughput(base):.2f}x) "
                    f"| {high:.3f} | {low:.3f} | {high / low:.2f} | {run.peak} / "
                    f"{workload.num_parallel} | {run.round_trips:.2f} ({run.request_trips:.2f}) | "
                    f"{run.round_trip_ms:.2f} | {run.refused:.2f} | {run.handed:.2f} |"
                )
            lines.append("")
    return "\n".join(lines)


def run(seed: int = 7, duration: float = 10.0, replicas: int = 3) -> None:
    print(asyncio.run(benchmark(seed, duration, replicas)))
