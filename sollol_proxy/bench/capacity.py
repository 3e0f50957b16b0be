"""Zero configuration against the truth: simulated fleets whose slot counts are hidden from the
proxy, which is given only their URLs.

Each fleet gets the same seeded Poisson arrivals of streamed chats, near its capacity, in four
modes: the proxy given only URLs (`auto`), the same proxy told every node's num_parallel
(`told`; when a node restarts with another value it is told that too, by a reload at that
instant: an oracle), the proxy given only URLs with `queue.enabled: false` (`no queue`), and a
least-connections balancer (nginx `least_conn` when nginx is installed, else the proxy's own
`least_loaded` with the queue off). Decode slows by 10 % per extra busy slot (the simulator's
`batch_slowdown`), as batched decoding does on a GPU. With `repeat`, every mode runs the same
seeds and their requests are pooled. The auto runs also record what the proxy believes each
node has, to report the learned slots against the truth and when they were right for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from sollol_proxy.app import FLEET, apply_config
from sollol_proxy.bench import nginx
from sollol_proxy.bench.routing import _q
from sollol_proxy.config import Config, load_config
from sollol_proxy.fleet.capacity import model_slots
from sollol_proxy.server import RunningProxy, start_proxy
from sollol_proxy.simulator import SimulatedNode

MODEL = "llama3.2:latest"
SAMPLE_S = 0.1  # how often the auto run reads the beliefs


@dataclass(frozen=True)
class Fleet:
    name: str
    description: str
    slots: tuple[int, ...]  # each node's hidden OLLAMA_NUM_PARALLEL
    restart: tuple[int, int] | None = None  # (node, new num_parallel) half-way through


FLEETS = {
    "mixed": Fleet("mixed", "3 nodes whose hidden OLLAMA_NUM_PARALLEL is 1, 2 and 4", (1, 2, 4)),
    "all4": Fleet("all4", "3 nodes with 4 hidden slots each", (4, 4, 4)),
    "restart": Fleet(
        "restart",
        "3 nodes with 2, 2 and 1 hidden slots; the third restarts with 4 half-way",
        (2, 2, 1),
        restart=(2, 4),
    ),
}


@dataclass(frozen=True)
class Workload:
    tokens: int = 20  # per answer
    token_delay: float = 0.01  # seconds per token with one busy slot
    batch_slowdown: float = 0.1  # each more busy slot makes every token 10 % slower
    load: float = 0.9  # offered load over the fleet's capacity (before any restart)
    duration: float = 60.0  # seconds of arrivals
    warmup: float = 30.0  # "steady" figures count the requests that arrive after this

    def capacity(self, slots: tuple[int, ...]) -> float:
        """Requests per second the fleet completes with every slot busy."""
        return sum(
            s / (self.tokens * self.token_delay * (1 + self.batch_slowdown * (s - 1)))
            for s in slots
        )


@dataclass
class Sample:
    arrived: float
    ttft: float
    total: float
    ok: bool


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    waited_in_ollama: float = 0.0
    beliefs: list[tuple[float, tuple[int, ...]]] = field(default_factory=list)
    repeats: list[Run] = field(default_factory=list)  # a pooled run: the runs it pools

    @classmethod
    def pooled(cls, runs: list[Run]) -> Run:
        """Several runs of one mode (other seeds) as one: percentiles over all their requests,
        throughput and time waited in Ollama averaged."""
        if len(runs) == 1:
            return runs[0]
        return cls(
            [s for r in runs for s in r.samples],
            sum(r.waited_in_ollama for r in runs) / len(runs),
            repeats=runs,
        )

    def throughput(self, since: float = 0.0) -> float:
        if self.repeats:
            return sum(r.throughput(since) for r in self.repeats) / len(self.repeats)
        done = [s.arrived + s.total for s in self.samples if s.ok and s.arrived >= since]
        return len(done) / (max(done) - since) if done else 0.0

    def converged(self, truth: tuple[int, ...], start: float, end: float) -> float | None:
        """Seconds from `start` until the beliefs were `truth` for good; the slowest run's."""
        times = [converged(r.beliefs, truth, start, end) for r in self.repeats or [self]]
        return None if None in times else max(t for t in times if t is not None)

    def of(self, since: float) -> list[Sample]:
        return [s for s in self.samples if s.arrived >= since]


def arrivals(rate: float, duration: float, seed: int) -> list[float]:
    rng, clock, times = random.Random(seed), 0.0, []
    while True:
        clock += rng.expovariate(rate)
        if clock >= duration:
            return times
        times.append(clock)


async def _send(http: aiohttp.ClientSession, url: str, tokens: int, index: int) -> Sample:
    body = orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"question {index}"}],
            "options": {"num_predict": tokens},
        }
    )
    start = time.perf_counter()
    first: float | None = None
    ok = False
    try:
        async with http.post(url + "/api/chat", data=body) as response:
            async for line in response.content:
                if first is None:
                    first = time.perf_counter() - start
                obj = orjson.loads(line)
                ok = response.status == 200 and "error" not in obj and bool(obj.get("done"))
    except (aiohttp.ClientError, ValueError):
        ok = False
    total = time.perf_counter() - start
    return Sample(0.0, total if first is None else first, total, ok)


def _config(nodes: list[SimulatedNode], told: tuple[int, ...] | None, **settings: Any) -> Config:
    return load_config(
        None,
        env={},
        overrides={
            "listen.host": "127.0.0.1",
            "listen.port": 0,
            "health.interval": 0.5,
            "inventory.interval": 5,
            "log_level": "warning",
            "nodes": [
                n.url if told is None else {"url": n.url, "num_parallel": told[i]}
                for i, n in enumerate(nodes)
            ],
            **settings,
        },
    )


@contextlib.asynccontextmanager
async def _front(mode: str, nodes: list[SimulatedNode], fleet: Fleet) -> AsyncIterator[Any]:
    """What the clients talk to in `mode`: a proxy (RunningProxy) or nginx (its URL)."""
    if mode == "least conn" and nginx.available():
        async with nginx.least_conn([n.url for n in nodes]) as url:
            yield url
        return
    settings: dict[str, Any] = {}
    if mode in ("no queue", "least conn"):
        settings["queue.enabled"] = False
    if mode == "least conn":
        settings["routing.strategy"] = "least_loaded"
    proxy = await start_proxy(_config(nodes, fleet.slots if mode == "told" else None, **settings))
    try:
        yield proxy
    finally:
        await proxy.stop()


def _beliefs(proxy: RunningProxy) -> tuple[int, ...]:
    return tuple(model_slots(n, MODEL) for n in proxy.runner.app[FLEET].nodes.values())


async def run_mode(mode: str, fleet: Fleet, workload: Workload, seed: int) -> Run:
    nodes = [
        SimulatedNode(
            name=f"n{i}",
            models=[MODEL],
            num_parallel=slots,
            token_delay=workload.token_delay,
            batch_slowdown=workload.batch_slowdown,
        )
        for i, slots in enumerate(fleet.slots)
    ]
    for node in nodes:
        await node.start(port=0)
    async with aiohttp.ClientSession() as http:  # a warm fleet: the model is loaded everywhere
        for node in nodes:
            async with http.post(node.url + "/api/generate", json={"model": MODEL}) as r:
                await r.read()
    run = Run()
    rate = workload.capacity(fleet.slots) * workload.load
    try:
        async with (
            _front(mode, nodes, fleet) as front,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
        ):
            url = front if isinstance(front, str) else front.url
            t0 = time.perf_counter()

            async def timed(index: int, at: float) -> None:
                await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
                sample = await _send(http, url, workload.tokens, index)
                sample.arrived = at
                run.samples.append(sample)

            async def restart() -> None:
                assert fleet.restart is not None
                index, slots = fleet.restart
                await asyncio.sleep(workload.duration / 2)
                await nodes[index].restart(num_parallel=slots)
                if mode == "told":  # the operator edits the config and reloads at once
                    truth = list(fleet.slots)
                    truth[index] = slots
                    apply_config(front.runner.app, _config(nodes, tuple(truth)))

            async def sample() -> None:
                while True:
                    run.beliefs.append((time.perf_counter() - t0, _beliefs(front)))
                    await asyncio.sleep(SAMPLE_S)

            background = []
            if fleet.restart is not None:
                background.append(asyncio.create_task(restart()))
            if mode == "auto":
                background.append(asyncio.create_task(sample()))
            times = arrivals(rate, workload.duration, seed)
            await asyncio.gather(*(timed(i, at) for i, at in enumerate(times)))
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
    finally:
        run.waited_in_ollama = sum(n.stats.queue_wait for n in nodes)
        for node in nodes:
            await node.stop()
    return run


def converged(
    beliefs: list[tuple[float, tuple[int, ...]]], truth: tuple[int, ...], start: float, end: float
) -> float | None:
    """Seconds from `start` until the beliefs equal `truth` for good (until `end`)."""
    since: float | None = None
    for at, believed in beliefs:
        if at < start or at >= end:
            continue
        since = (at if since is None else since) if believed == truth else None
    return None if since is None else since - start


MODES = ("auto", "told", "no queue", "least conn")


def _row(mode: str, run: Run, told: Run, since: float) -> str:
    samples, base = run.of(since), told.of(since)

    def cell(values: list[float], reference: list[float]) -> str:
        value, ref = _q(values, 95), _q(reference, 95)
        return f"{value:.3f} ({value / ref:.2f})" if ref else f"{value:.3f}"

    throughput, reference = run.throughput(since), told.throughput(since)
    return (
        f"| {mode} | {len(samples)} | {sum(not s.ok for s in samples)} | "
        f"{throughput:.1f} ({throughput / reference if reference else 0:.2f}) | "
        f"{_q([s.ttft for s in samples], 50):.3f} | "
        f"{cell([s.ttft for s in samples], [s.ttft for s in base])} | "
        f"{_q([s.total for s in samples], 50):.3f} | "
        f"{cell([s.total for s in samples], [s.total for s in base])} | "
        f"{run.waited_in_ollama:.1f} |"
    )


def report(fleet: Fleet, workload: Workload, runs: dict[str, Run], seeds: str) -> list[str]:
    baseline = "nginx least_conn" if nginx.available() else "the proxy's least_loaded, no queue"
    rate = workload.capacity(fleet.slots) * workload.load
    lines = [
        f"\n**{fleet.name}**: {fleet.description}; {rate:.1f} req/s offered "
        f"({workload.load:g}x capacity) for {workload.duration:g} s; each mode pools "
        f"{len(runs['auto'].repeats) or 1} runs (seeds {seeds}); least conn = {baseline}\n",
    ]
    auto = runs["auto"]
    truth, end = fleet.slots, workload.duration
    if fleet.restart is not None:
        index, slots = fleet.restart
        end = workload.duration / 2
        after = tuple(slots if i == index else s for i, s in enumerate(fleet.slots))
    last = (auto.repeats or [auto])[-1].beliefs
    learned = last[-1][1] if last else ()
    took = auto.converged(truth, 0.0, end)
    lines.append(
        f"Slots learned (auto) at the end: {list(learned)}; truth {list(truth)}"
        + (f" -> {list(after)} after the restart" if fleet.restart else "")
        + f". Right for good after {_seconds(took)} (the slowest run)"
        + (
            f"; after the restart, relearned in {_seconds(auto.converged(after, end, 1e9))}."
            if fleet.restart
            else "."
        )
    )
    header = (
        "| run | requests | errors | completed/s (vs told) | TTFT p50 | TTFT p95 (vs told) "
        "| total p50 | total p95 (vs told) | waited in Ollama (s) |"
    )
    for title, since in (("whole run", 0.0), (f"after {workload.warmup:g} s", workload.warmup)):
        lines += ["", f"{title}:", "", header, "|---|---|---|---|---|---|---|---|---|"]
        lines += [_row(mode, runs[mode], runs["told"], since) for mode in MODES if mode in runs]
    return lines


def _seconds(value: float | None) -> str:
    return "never (within the run)" if value is None else f"{value:.1f} s"


async def benchmark(
    seed: int = 7,
    fleets: list[str] | None = None,
    workload: Workload | None = None,
    repeat: int = 1,
) -> str:
    workload = workload or Workload()
    out: list[str] = []
    for name in fleets or list(FLEETS):
        fleet = FLEETS[name]
        runs = {}
        for mode in MODES:
            seeds = range(seed, seed + repeat)
            runs[mode] = Run.pooled([await run_mode(mode, fleet, workload, s) for s in seeds])
        named = f"{seed}-{seed + repeat - 1}" if repeat > 1 else str(seed)
        out += report(fleet, workload, runs, named)
    return "\n".join(out)


def run(
    seed: int = 7,
    fleets: list[str] | None = None,
    duration: float = 60.0,
    warmup: float = 30.0,
    load: float = 0.9,
    repeat: int = 1,
) -> None:
    workload = Workload(duration=duration, warmup=warmup, load=load)
    print(asyncio.run(benchmark(seed, fleets, workload, repeat)))
