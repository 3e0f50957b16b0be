"""What the proxy adds: latency per request and CPU per request and per streamed chunk.

The same requests go straight to a simulated node and through a real `sollol-proxy` process in
front of that node, alternating in rounds so that machine noise hits both alike. The proxy's CPU
time is read from /proc for its process alone.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from sollol_proxy.forward.record import Outcome
from sollol_proxy.observe.timeseries import TimeSeries
from sollol_proxy.simulator import SimulatedNode

TOKENS_PER_STREAM = 256


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    body: bytes
    concurrency: int
    requests: int
    chunks_per_request: int = 1


WORKLOADS = [
    Workload("show (small JSON), 1 client", "/api/show", b'{"model":"llama3.2"}', 1, 400),
    Workload(
        "chat stream:false, 1 client",
        "/api/chat",
        b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}',
        1,
        400,
    ),
    Workload(
        "chat stream:false, 16 clients",
        "/api/chat",
        b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}',
        16,
        1600,
    ),
    Workload(
        f"generate stream, {TOKENS_PER_STREAM} chunks, 4 clients",
        "/api/generate",
        b'{"model":"llama3.2","prompt":"x","options":{"num_predict":%d}}' % TOKENS_PER_STREAM,
        4,
        80,
        TOKENS_PER_STREAM + 1,
    ),
]


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
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


async def benchmark(rounds: int, scale: float) -> str:
    node = SimulatedNode(name="bench", models=["llama3.2:latest"], num_parallel=16)
    await node.start(port=0)
    port = _free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        config.write(
            f"listen: {{host: 127.0.0.1, port: {port}}}\n"
            f"nodes: [{{url: '{node.url}', name: bench, num_parallel: 16}}]\nlog_level: warning\n"
        )
    proxy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sollol_proxy", "-c", config.name
    )
    proxy_url = f"http://127.0.0.1:{port}"
    lines = []
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
            await _wait_ready(http, proxy_url, proxy)
            for load in WORKLOADS:
                requests = max(load.concurrency, int(load.requests * scale))
                direct, through = Sample(), Sample()
                await _run(
                    http, node.url, load, load.concurrency * 2
                )  # warm connections and the model
                await _run(http, proxy_url, load, load.concurrency * 2)
                for _ in range(rounds):
                    for target, sample in ((node.url, direct), (proxy_url, through)):
                        cpu_before = _cpu_seconds(proxy.pid)
                        result = await _run(http, target, load, requests)
                        sample.latencies += result.latencies
                        sample.wall += result.wall
                        sample.cpu += _cpu_seconds(proxy.pid) - cpu_before
                lines.append(_report(load, direct, through))
    finally:
        proxy.terminate()
        await asyncio.wait_for(proxy.wait(), 10)
        os.unlink(config.name)
        await node.stop()
    header = (
        "| workload | direct p50 / p95 ms | via proxy p50 / p95 ms | added p50 ms | p50 ratio "
        "| throughput ratio | proxy CPU per request | per chunk |\n|---|---|---|---|---|---|---|---|"
    )
    us, allocated = series_cost()
    series = (
        f"\nKeeping the dashboard's time series (in process): {us:.2f} us and "
        f"{allocated:.2f} bytes kept per request"
    )
    return header + "\n" + "\n".join(lines) + "\n" + series


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


def _report(load: Workload, direct: Sample, through: Sample) -> str:
    count = len(through.latencies)
    cpu_per_request = through.cpu / count * 1e6
    per_chunk = (
        f"{through.cpu / (count * load.chunks_per_request) * 1e6:.1f} us"
        if load.chunks_per_request > 1
        else "-"
    )
    d50, d95, p50, p95 = (
        _ms(direct.latencies, 50),
        _ms(direct.latencies, 95),
        _ms(through.latencies, 50),
        _ms(through.latencies, 95),
    )
    throughput_ratio = (len(through.latencies) / through.wall) / (
        len(direct.latencies) / direct.wall
    )
    return (
        f"| {load.name} | {d50:.2f} / {d95:.2f} | {p50:.2f} / {p95:.2f} | {p50 - d50:+.2f} | "
        f"{p50 / d50:.2f}x | {throughput_ratio:.2f}x | {cpu_per_request:.0f} us | {per_chunk} |"
    )


def run(rounds: int = 3, scale: float = 1.0) -> None:
    print(asyncio.run(benchmark(rounds, scale)))
