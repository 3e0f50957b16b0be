"""The priority queue under overload, against plain pass-through, on the same simulated cluster.

Open-loop Poisson traffic at about twice the fleet's capacity, 20% priority 9 and 80% priority 2,
the same seeded arrivals sent twice: once with admission control (the proxy holds the excess and
serves it by priority) and once with the queue disabled (every request goes straight to a node
and waits in Ollama's FIFO). Per class: wait (time to the first byte, which is where any queue
shows), total latency, completed requests per second, errors.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

from sollol_proxy.bench.routing import _q
from sollol_proxy.config import load_config
from sollol_proxy.server import start_proxy
from sollol_proxy.simulator import SimulatedNode

CLASSES = {"high": 9, "low": 2}
HIGH_SHARE = 0.2
MODEL = "llama3.2:latest"


@dataclass(frozen=True)
class Workload:
    nodes: int = 4
    num_parallel: int = 2
    token_delay: float = 0.01  # seconds per generated token on every node
    tokens: int = 20  # per answer: a request holds its slot about tokens * token_delay
    load: float = 2.0  # offered load as a multiple of the fleet's capacity
    duration: float = 15.0  # seconds of arrivals

    @property
    def capacity(self) -> float:
        """Requests per second the fleet completes when every slot is busy."""
        return self.nodes * self.num_parallel / (self.tokens * self.token_delay)


@dataclass
class ClassResult:
    waits: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    queued_ms: list[float] = field(default_factory=list)  # what X-Sollol-Queue-Ms said
    errors: int = 0
    last_done: float = 0.0


def arrivals(workload: Workload, seed: int) -> list[tuple[float, str]]:
    rng = random.Random(seed)
    rate = workload.capacity * workload.load
    clock, calls = 0.0, []
    while True:
        clock += rng.expovariate(rate)
        if clock >= workload.duration:
            return calls
        calls.append((clock, "high" if rng.random() < HIGH_SHARE else "low"))


async def _send(
    http: aiohttp.ClientSession, url: str, workload: Workload, cls: str, result: ClassResult
) -> None:
    body = orjson.dumps(
        {"model": MODEL, "prompt": "why?", "options": {"num_predict": workload.tokens}}
    )
    start = time.perf_counter()
    first: float | None = None
    failed = False
    try:
        async with http.post(
            url + "/api/generate", data=body, headers={"X-Sollol-Priority": str(CLASSES[cls])}
        ) as response:
            queued = response.headers.get("X-Sollol-Queue-Ms")
            if queued is not None:
                result.queued_ms.append(float(queued))
            async for line in response.content:
                if first is None:
                    first = time.perf_counter() - start
                if response.status != 200 or "error" in orjson.loads(line):
                    failed = True
    except aiohttp.ClientError:
        failed = True
    elapsed = time.perf_counter() - start
    result.errors += failed
    result.waits.append(elapsed if first is None else first)
    result.totals.append(elapsed)
    if not failed:
        result.last_done = time.perf_counter()


async def start_nodes(workload: Workload) -> list[SimulatedNode]:
    """The workload's simulated fleet, started on free ports."""
    nodes = [
        SimulatedNode(
            name=f"n{i}",
            models=[MODEL],
            num_parallel=workload.num_parallel,
            token_delay=workload.token_delay,
        )
        for i in range(workload.nodes)
    ]
    for node in nodes:
        await node.start(port=0)
    return nodes


async def run_mode(
    workload: Workload, seed: int, queue: bool
) -> tuple[dict[str, ClassResult], float]:
    nodes = await start_nodes(workload)
    async with aiohttp.ClientSession() as http:
        for node in nodes:  # a warm fleet: the model is loaded everywhere
            async with http.post(node.url + "/api/generate", json={"model": MODEL}) as r:
                await r.read()
    config = load_config(
        None,
        env={},
        overrides={
            "listen.host": "127.0.0.1",
            "listen.port": 0,
            "log_level": "warning",
            "queue.enabled": queue,
            "nodes": [n.url for n in nodes],  # zero configuration: the slots are learned
        },
    )
    proxy = await start_proxy(config)
    results = {cls: ClassResult() for cls in CLASSES}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            t0 = time.perf_counter()

            async def timed(at: float, cls: str) -> None:
                await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
                await _send(http, proxy.url, workload, cls, results[cls])

            await asyncio.gather(*(timed(at, cls) for at, cls in arrivals(workload, seed)))
    finally:
        node_wait = sum(node.stats.queue_wait for node in nodes)
        await proxy.stop()
        for node in nodes:
            await node.stop()
    for result in results.values():
        result.last_done -= t0
    return results, node_wait


def _throughput(result: ClassResult) -> float:
    done = len(result.totals) - result.errors
    return done / result.last_done if result.last_done > 0 else 0.0


async def benchmark(seed: int = 7, workload: Workload | None = None) -> str:
    workload = workload or Workload()
    runs = {
        "queue": await run_mode(workload, seed, queue=True),
        "no queue": await run_mode(workload, seed, queue=False),
    }
    lines = [
        f"{workload.nodes} nodes x {workload.num_parallel} slots, capacity "
        f"{workload.capacity:.0f} req/s, offered {workload.capacity * workload.load:.0f} req/s "
        f"for {workload.duration:g}s ({HIGH_SHARE:.0%} priority 9, {1 - HIGH_SHARE:.0%} "
        "priority 2); seconds",
        "",
        "| mode | class | requests | errors | wait p50 | wait p95 | latency p50 | latency p95 "
        "| completed/s | waited in Ollama (s, all classes) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, (results, node_wait) in runs.items():
        for cls, r in results.items():
            lines.append(
                f"| {mode} | {cls} | {len(r.totals)} | {r.errors} | {_q(r.waits, 50):.3f} | "
                f"{_q(r.waits, 95):.3f} | {_q(r.totals, 50):.3f} | {_q(r.totals, 95):.3f} | "
                f"{_throughput(r):.1f} | {node_wait:.1f} |"
            )
    queued, plain = runs["queue"][0], runs["no queue"][0]
    wait_ratio = _q(queued["high"].waits, 95) / _q(queued["low"].waits, 95)
    throughput_ratio = _throughput(queued["low"]) / _throughput(plain["low"])
    lines += [
        "",
        f"With the queue: high p95 wait / low p95 wait = {wait_ratio:.3f} (target <= 0.2); "
        f"low-priority throughput vs no queue = {throughput_ratio:.2f}x (target >= 1.00).",
    ]
    return "\n".join(lines)


def run(seed: int = 7, duration: float = 15.0, load: float = 2.0) -> None:
    print(asyncio.run(benchmark(seed, Workload(duration=duration, load=load))))
