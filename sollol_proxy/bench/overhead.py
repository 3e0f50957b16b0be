"""What the proxy adds, against the node reached directly and against nginx doing the same
pass-through: latency per request, CPU per request and CPU per streamed chunk.

The same requests go straight to a simulated node, through nginx (one process, least_conn, no
buffering; when Debian's nginx is installed) and through a real `sollol-proxy` process given the
node's URL only, alternating in rounds so that machine noise hits all alike. CPU time is read
from /proc for the proxy's process and for nginx's alone, and the ratio of the two is taken
round by round (its median and range reported). Small requests run against a node
that answers at once; streams against a node that paces its tokens, so that every chunk is a
read and a write of its own, as with a real model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from sollol_proxy.bench import nginx
from sollol_proxy.forward.record import Outcome, RequestRecord
from sollol_proxy.observe.accesslog import log_request
from sollol_proxy.observe.logformat import PLAIN
from sollol_proxy.observe.logwriter import BatchingHandler
from sollol_proxy.observe.timeseries import TimeSeries
from sollol_proxy.simulator import SimulatedNode

MODEL = "llama3.2:latest"
SLOTS = 16  # the simulated node's num_parallel
TOKENS_PER_STREAM = 128
PACED_TOKEN_S = 0.002  # 500 tokens/s per stream: chunks arrive one at a time
CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    body: bytes
    concurrency: int
    requests: int
    chunks_per_request: int = 1


SMALL = [
    Workload("show (small JSON), 1 client", "/api/show", b'{"model":"llama3.2"}', 1, 400),
    Workload("chat stream:false, 1 client", "/api/chat", CHAT, 1, 400),
    Workload("chat stream:false, 16 clients", "/api/chat", CHAT, 16, 1600),
]
STREAMS = [
    Workload(
        f"generate stream, {TOKENS_PER_STREAM} paced chunks, 8 clients",
        "/api/generate",
        b'{"model":"llama3.2","prompt":"x","options":{"num_predict":%d}}' % TOKENS_PER_STREAM,
        8,
        64,
        TOKENS_PER_STREAM + 1,
    ),
]


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    # Each round's CPU seconds and what it served: a ratio to nginx is taken round by round,
    # between rounds run one after the other (see `_report`).
    rounds: list[tuple[float, int]] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run(http: aiohttp.ClientSession, base: str, load: Workload, requests: int) -> Sample:
    sample = Sample()
    queue = iter(range(requests))

    async def client() -> None:
        for _ in queue:
            start = time.perf_counter()
            async with http.post(base + load.path, data=load.body) as response:
                await response.read()
                assert response.status == 200, response.status
            sample.latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(load.concurrency)))
    sample.wall = time.perf_counter() - started
    return sample


async def _wait_ready(
    http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process
) -> None:
    for _ in range(200):
        if process.returncode is not None:
            raise RuntimeError("the proxy exited during startup")
        try:
            async with http.get(url + "/api/tags") as response:
                if response.status == 200 and b"llama3.2" in await response.read():
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("the proxy did not become ready")


def _ms(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100)[int(q) - 1] * 1000
        if len(values) > 1
        else values[0] * 1000
    )


@dataclass
class Target:
    name: str
    url: str
    pid: int | None  # whose CPU is counted (None: the node itself, nothing in between)
    samples: dict[str, Sample] = field(default_factory=dict)
    # A proxy's: the node's slots it believed after the workloads (`/sollol/nodes`). Below the
    # node's own, the requests beyond them waited in the proxy's queue.
    believed: int | None = None


def proxy_name(engine: str, engines: Sequence[str]) -> str:
    return "sollol-proxy" if len(engines) == 1 else f"sollol-proxy ({engine})"


async def _measure(
    node: SimulatedNode, loads: list[Workload], rounds: int, scale: float, engines: Sequence[str]
) -> list[Target]:
    targets = [Target("direct", node.url, None)]
    proxies: list[tuple[asyncio.subprocess.Process, str]] = []
    for engine in engines:
        port = _free_port()
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
            # Zero configuration: the node's URL and nothing else, as people run it.
            config.write(
                f"listen: {{host: 127.0.0.1, port: {port}, engine: {engine}}}\n"
                f"nodes: ['{node.url}']\nlog_level: warning\n"
            )
        proxy = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sollol_proxy", "-c", config.name
        )
        proxies.append((proxy, config.name))
        url = f"http://127.0.0.1:{port}"
        targets.append(Target(proxy_name(engine, engines), url, proxy.pid))
    try:
        async with contextlib.AsyncExitStack() as stack:
            if nginx.available():
                nginx_port = _free_port()
                process = await stack.enter_async_context(nginx.nginx([node.url], nginx_port))
                targets.insert(1, Target("nginx", f"http://127.0.0.1:{nginx_port}", process.pid))
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
                for (proxy, _), target in zip(proxies, targets[-len(proxies) :], strict=True):
                    await _wait_ready(http, target.url, proxy)
                for load in loads:
                    requests = max(load.concurrency, int(load.requests * scale))
                    for target in targets:  # warm connections and the model
                        await _run(http, target.url, load, load.concurrency * 2)
                        target.samples[load.name] = Sample()
                    for _ in range(rounds):
                        for target in targets:
                            sample = target.samples[load.name]
                            cpu_before = _cpu_seconds(target.pid)
                            result = await _run(http, target.url, load, requests)
                            cpu = _cpu_seconds(target.pid) - cpu_before
                            sample.latencies += result.latencies
                            sample.wall += result.wall
                            sample.cpu += cpu
                            sample.rounds.append((cpu, len(result.latencies)))
                for target in targets[-len(proxies) :]:
                    async with http.get(target.url + "/sollol/nodes") as response:
                        (shown,) = (await response.json())["nodes"]
                    target.believed = int(shown["capacity"]["models"][MODEL]["believed"])
    finally:
        for proxy, config_name in proxies:
            proxy.terminate()
            await asyncio.wait_for(proxy.wait(), 10)
            os.unlink(config_name)
    return targets


async def benchmark(rounds: int, scale: float, engines: Sequence[str] = ("fast",)) -> str:
    fast = SimulatedNode(name="bench", models=[MODEL], num_parallel=SLOTS)
    paced = SimulatedNode(
        name="paced", models=[MODEL], num_parallel=SLOTS, token_delay=PACED_TOKEN_S
    )
    results: list[tuple[Workload, list[Target]]] = []
    beliefs = []
    for node, loads in ((fast, SMALL), (paced, STREAMS)):
        await node.start(port=0)
        try:
            targets = await _measure(node, loads, rounds, scale, engines)
        finally:
            await node.stop()
        results += [(load, targets) for load in loads]
        beliefs += [f"{t.name} {t.believed} after {loads[-1].name}" for t in targets if t.believed]
    names = [t.name for t in results[0][1] if t.name != "direct"]
    proxies = [proxy_name(e, engines) for e in engines]
    header = "| workload | " + " | ".join(f"{n} p50 / p99 ms" for n in ["direct", *names])
    for engine in engines:
        label = "proxy" if len(engines) == 1 else engine
        header += f" | added p50 ms ({label}) | {label} CPU"
        if "nginx" in names:
            header += (
                " | CPU ratio to nginx, median of rounds (range)"
                if len(engines) == 1
                else f" | {label} / nginx, median of rounds (range)"
            )
    header += " | nginx CPU |" if "nginx" in names else " |"
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    lines += [_report(load, {t.name: t for t in targets}, proxies) for load, targets in results]
    lines.append(
        f"\nSlots of the node's {SLOTS} the proxy believed (given its URL only): "
        + "; ".join(beliefs)
    )
    us, allocated = series_cost()
    lines.append(
        f"Keeping the dashboard's time series (in process): {us:.2f} us and "
        f"{allocated:.2f} bytes kept per request"
    )
    on_loop, in_all = access_log_cost()
    lines.append(
        f"The access log (off above: log_level warning; on by default), in process: "
        f"{on_loop:.1f} us per request on the event loop, {in_all:.1f} us of CPU in all"
    )
    if "nginx" not in names:
        lines.append("nginx is not installed: no nginx baseline in this run")
    return "\n".join(lines)


def _cpu_unit(load: Workload, sample: Sample) -> float:
    """CPU per request, or per chunk for streams, in microseconds."""
    count = len(sample.latencies) * load.chunks_per_request
    return sample.cpu / count * 1e6


def _ratio(proxy: Sample, nginx: Sample) -> str:
    """CPU per request of `proxy` over nginx's: the median of the rounds' ratios, and their
    range. On a shared machine either process's CPU per request moves by 2x and more from one
    round to the next (load on the other core, caches); a ratio of two rounds run one after
    the other cancels what hits both, and the median leaves out a round that one alone met."""
    ratios = [
        (cpu / served) / (base / base_served)
        for (cpu, served), (base, base_served) in zip(proxy.rounds, nginx.rounds, strict=True)
        if base
    ]
    if not ratios:
        return "-"
    median = f"{statistics.median(ratios):.1f}x"
    return median if len(ratios) < 2 else f"{median} ({min(ratios):.1f}-{max(ratios):.1f})"


def _report(load: Workload, targets: dict[str, Target], proxies: Sequence[str]) -> str:
    unit = "chunk" if load.chunks_per_request > 1 else "request"
    cells = [load.name]
    for target in targets.values():
        sample = target.samples[load.name]
        cells.append(f"{_ms(sample.latencies, 50):.2f} / {_ms(sample.latencies, 99):.2f}")
    direct = targets["direct"].samples[load.name]
    nginx = targets["nginx"].samples[load.name] if "nginx" in targets else None
    for name in proxies:
        proxy = targets[name].samples[load.name]
        cells.append(f"{_ms(proxy.latencies, 50) - _ms(direct.latencies, 50):+.2f}")
        proxy_cpu = _cpu_unit(load, proxy)
        cells.append(f"{proxy_cpu:.1f} us/{unit}")
        if nginx is not None:
            cells.append(_ratio(proxy, nginx))
    if nginx is not None:
        cells.append(f"{_cpu_unit(load, nginx):.1f} us/{unit}")
    return "| " + " | ".join(cells) + " |"


def series_cost(requests: int = 50_000) -> tuple[float, float]:
    """CPU time and memory kept per request by the dashboard's time series (the work
    `History.observe` does per request), once the ring has gone round a whole hour."""
    series = TimeSeries([o.value for o in Outcome])
    ok = Outcome.OK.value
    now = 1_700_000_000.0

    def burst() -> float:
        nonlocal now
        start = time.perf_counter()
        for _ in range(requests):
            now += 0.1  # 50,000 requests span 83 minutes: more than the hour kept
            series.record_request(now, ok, 0.05, 0.4, 12, "a", 0.001)
        return time.perf_counter() - start

    burst()  # fills every bucket of the ring once
    elapsed = burst()
    tracemalloc.start()
    burst()  # traced from here: what the ring holds now was allocated under the trace
    before = tracemalloc.get_traced_memory()[0]
    burst()
    allocated = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return elapsed / requests * 1e6, max(0, allocated) / requests


def access_log_cost(requests: int = 20_000) -> tuple[float, float]:
    """Microseconds per request of the access log as the CLI sets it up (log_level info, plain
    lines, written to /dev/null here): on the event loop (the line built and queued), and CPU
    in all (with the writer thread's formatting and writing)."""
    record = RequestRecord("0123456789abcdef", "POST", "/api/chat", "127.0.0.1")
    record.model, record.node, record.status = "llama3.2:latest", "127.0.0.1:11434", 200
    record.route, record.reason = "performance: resident, 1 of 1 slots free", "resident"
    record.tokens_in, record.tokens_out, record.ttft_s, record.duration_s = 10, 20, 0.005, 0.01
    logger = logging.getLogger("sollol.access")
    saved = logger.level, logger.propagate
    with open(os.devnull, "w") as sink:
        handler = BatchingHandler(sink)
        handler.setFormatter(logging.Formatter(PLAIN))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            cpu, start = time.process_time(), time.thread_time()
            for _ in range(requests):
                log_request(record)
            on_loop = time.thread_time() - start  # this thread's CPU: the writer's is not in it
            handler.close()  # the writer thread writes the rest
            in_all = time.process_time() - cpu
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
    return on_loop / requests * 1e6, in_all / requests * 1e6


def run(rounds: int = 3, scale: float = 1.0, engines: Sequence[str] = ("fast",)) -> None:
    print(asyncio.run(benchmark(rounds, scale, engines)))
