"""Zero configuration against the truth: simulated fleets whose slot counts are hidden from the
proxy, which is given only their URLs.

Each fleet gets the same seeded Poisson arrivals of streamed chats, near its capacity, in five
modes: the proxy given only URLs (`auto`), the same proxy told every node's num_parallel
(`told`; when a node restarts with another value it is told that too, by a reload at that
instant: an oracle), told once more (`told again`: how far two runs of one proxy are apart, the
noise against which capacity_verdict.py reads the targets), the proxy given only URLs with
`queue.enabled: false` (`no queue`), and a least-connections balancer (nginx `least_conn` when
nginx is installed, else the proxy's own `least_loaded` with the queue off). Decode slows by
10 % per extra busy slot (the simulator's `batch_slowdown`), as batched decoding does on a GPU.
With `repeat`, every mode runs the same seeds and their requests are pooled. The auto runs also
record what the proxy believes each node has, to report the learned slots against the truth and
when they were right for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from sollol_proxy.app import FLEET, apply_config
from sollol_proxy.bench import nginx
from sollol_proxy.bench.capacity_runs import (
    FLEETS,
    MODES,
    TOLD,
    Fleet,
    Run,
    Sample,
    Workload,
    arrivals,
    report,
)
from sollol_proxy.bench.capacity_verdict import verdict
from sollol_proxy.bench.tasks import stop
from sollol_proxy.config import Config, load_config
from sollol_proxy.fleet.capacity import model_slots
from sollol_proxy.fleet.health import State
from sollol_proxy.server import RunningProxy, start_proxy
from sollol_proxy.simulator import SimulatedNode

MODEL = "llama3.2:latest"
SAMPLE_S = 0.1  # how often the auto run reads the beliefs


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
    proxy = await start_proxy(_config(nodes, fleet.slots if mode in TOLD else None, **settings))
    try:
        yield proxy
    finally:
        await proxy.stop()


def _beliefs(proxy: RunningProxy) -> tuple[int, ...]:
    return tuple(model_slots(n, MODEL) for n in proxy.runner.app[FLEET].nodes.values())


def _out(proxy: RunningProxy, index: int) -> bool:
    """Is node `index` out of the proxy's rotation (down, ejected, on trial)?"""
    node = list(proxy.runner.app[FLEET].nodes.values())[index]
    return node.health.current() is not State.UP


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
    waited_before = 0.0  # seconds of the slot semaphore waits that ended before the warm-up
    rate = workload.capacity(fleet.slots) * workload.load
    try:
        async with (
            _front(mode, nodes, fleet) as front,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
        ):
            url = front if isinstance(front, str) else front.url
            t0 = time.perf_counter()
            half = workload.duration / 2

            async def timed(index: int, at: float) -> None:
                await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
                sample = await _send(http, url, workload.tokens, index)
                sample.arrived = at
                run.samples.append(sample)

            async def restart() -> None:
                assert fleet.restart is not None
                index, slots = fleet.restart
                await asyncio.sleep(half)
                await nodes[index].restart(num_parallel=slots)
                if mode in TOLD:  # the operator edits the config and reloads at once
                    truth = list(fleet.slots)
                    truth[index] = slots
                    apply_config(front.runner.app, _config(nodes, tuple(truth)))

            async def sample() -> None:
                last = out = 0.0
                if fleet.restart is not None:
                    run.out_after_restart = out
                while True:
                    now = time.perf_counter() - t0
                    if mode == "auto":
                        run.beliefs.append((now, _beliefs(front)))
                    if fleet.restart is not None and last >= half and _out(front, fleet.restart[0]):
                        out += now - last
                        run.out_after_restart = out
                    last = now
                    await asyncio.sleep(SAMPLE_S)

            async def warmed_up() -> None:
                nonlocal waited_before
                await asyncio.sleep(max(0.0, t0 + workload.warmup - time.perf_counter()))
                waited_before = sum(n.stats.queue_wait for n in nodes)

            background = [asyncio.create_task(warmed_up())]
            if fleet.restart is not None:
                background.append(asyncio.create_task(restart()))
            if not isinstance(front, str):
                background.append(asyncio.create_task(sample()))
            times = arrivals(rate, workload.duration, seed)
            await asyncio.gather(*(timed(i, at) for i, at in enumerate(times)))
            await stop(*background)
    finally:
        run.waited_in_ollama = sum(n.stats.queue_wait for n in nodes)
        run.waited_after_warmup = run.waited_in_ollama - waited_before
        for node in nodes:
            await node.stop()
    return run


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
        each: dict[str, list[Run]] = {mode: [] for mode in MODES}
        # Seed by seed, every mode in turn: the load of a shared machine drifts over minutes,
        # and the modes compared should see the same drift.
        for s in range(seed, seed + repeat):
            for mode in MODES:
                each[mode].append(await run_mode(mode, fleet, workload, s))
        runs = {mode: Run.pooled(each[mode]) for mode in MODES}
        named = f"{seed}-{seed + repeat - 1}" if repeat > 1 else str(seed)
        out += report(fleet, workload, runs, named)
        out += ["", *verdict(runs, workload.warmup)]
    return "\n".join(out)


def run(
    seed: int = 7,
    fleets: list[str] | None = None,
    duration: float = 60.0,
    warmup: float = 30.0,
    load: float = 0.9,
    repeat: int = 1,
    tokens: int = 20,
) -> None:
    workload = Workload(tokens=tokens, duration=duration, warmup=warmup, load=load)
    print(asyncio.run(benchmark(seed, fleets, workload, repeat)))
