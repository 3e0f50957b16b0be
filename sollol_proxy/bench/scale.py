"""The proxy itself at scale: many configured nodes, many idle streams.

- **Fleets of 100 and 1,000 nodes** given as URLs only (stubfleet.py answers as that many
  nodes): the time from launching `sollol-proxy` until every node is up in `/sollol/nodes`, the
  proxy's memory then, its CPU per probe while idle (and the share of a core that makes at
  `health.interval`), how evenly the probes spread over the interval (the busiest tenth of it
  against a tenth of the nodes), and the whole per-request selection of `performance` over
  that many nodes given as URLs only (`bench scorer`'s measure).
- **Idle streams**: that many `/api/generate` streams open at once through one proxy process
  (to nodes of 1,000 slots each), each with its first line received and the node silent after
  it; the proxy's memory growth per stream (RSS from /proc), and nginx's in front of the same
  nodes when it is installed. Each stream holds two sockets in the proxy (client and node), so
  the open-files limit bounds the count: the soft limit is raised to the hard one, and fewer
  streams than asked are opened when the hard limit allows no more (the report says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from sollol_proxy.bench import nginx
from sollol_proxy.bench.selection import measure_selection

GENERATE = b'{"model":"llama3.2","prompt":"hello","stream":true}'
OPENING = 50  # streams being opened at once: within the proxy's listen backlog (100)
FD_RESERVE = 64  # descriptors a proxy needs beside its streams' sockets
SLOTS_PER_NODE = 1000  # idle streams go to as many nodes of this many slots as they need


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (inherited by the processes started
    from here); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stub:
    process: asyncio.subprocess.Process
    ports: list[int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(self.url + path) as response:
            return orjson.loads(await response.read())


@contextlib.asynccontextmanager
async def stub_fleet(ports: int) -> AsyncIterator[Stub]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sollol_proxy.bench.stubfleet",
        "--ports",
        str(ports),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        if not line:
            raise RuntimeError("the stub fleet exited during startup")
        yield Stub(process, orjson.loads(line))
    finally:
        process.stdin.close()  # it stops when its stdin closes
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def proxy_process(settings: dict[str, Any]) -> AsyncIterator[tuple[int, str]]:
    """A `sollol-proxy` process with `settings` (YAML keys) on a free port: (pid, URL), once
    /sollol/nodes answers."""
    port = _free_port()
    config = {"listen": {"host": "127.0.0.1", "port": port}, "log_level": "warning", **settings}
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "sollol.yaml"
        path.write_text(yaml.safe_dump(config))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sollol_proxy", "-c", str(path)
        )
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(6000):
                    if process.returncode is not None:
                        raise RuntimeError("the proxy exited during startup")
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(url + "/sollol/nodes") as response:
                            if response.status == 200:
                                break
                    await asyncio.sleep(0.05)
                else:
                    raise RuntimeError("the proxy did not start")
            yield process.pid, url
        finally:
            if process.returncode is None:
                process.terminate()
            await asyncio.wait_for(process.wait(), 60)


async def _nodes_up(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url + "/sollol/nodes") as response:
        return sum(n["healthy"] for n in orjson.loads(await response.read())["nodes"])


@dataclass
class FleetResult:
    nodes: int
    startup_s: float
    rss_mib: float
    cpu_ms_per_probe: float  # the proxy's CPU while idle, over the probes it sent meanwhile
    busiest_tenth: int  # probes in the busiest tenth of an interval
    selection_us: float


async def fleet_scale(nodes: int, interval: float = 5.0, intervals: float = 2.0) -> FleetResult:
    """Start a proxy given `nodes` URLs; watch its probes for `intervals` probe intervals."""
    raise_open_files_limit()
    async with stub_fleet(nodes) as stub:
        settings = {
            "nodes": [f"http://127.0.0.1:{port}" for port in stub.ports],
            "health": {"interval": interval},
        }
        launched = time.monotonic()
        async with proxy_process(settings) as (pid, url):
            for _ in range(1200):
                if await _nodes_up(url) == nodes:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("not every node came up within a minute")
            ready = time.monotonic()
            rss = _rss_kib(pid) / 1024
            cpu = _cpu_seconds(pid)
            await asyncio.sleep(interval * intervals)
            cpu = _cpu_seconds(pid) - cpu
            watched = time.monotonic()
            probes = [at for at, _ in await stub.get("/stub/probes") if ready < at <= watched]
    tenth = interval / 10
    counts: dict[int, int] = {}
    for at in probes:
        counts[int((at - ready) // tenth)] = counts.get(int((at - ready) // tenth), 0) + 1
    return FleetResult(
        nodes,
        ready - launched,
        rss,
        cpu / max(1, len(probes)) * 1000,
        max(counts.values(), default=0),
        (await measure_selection(nodes, max(3, 20_000 // nodes))).selection,
    )


async def _open_stream(port: int) -> asyncio.StreamWriter:
    """A streamed /api/generate whose headers and first bytes have arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(GENERATE), GENERATE)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"stream refused: {head[:200]!r}")
    if not await reader.read(1):
        raise RuntimeError("stream ended before its first chunk")
    return writer


async def _hold_streams(port: int, count: int, writers: list[asyncio.StreamWriter]) -> None:
    gate = asyncio.Semaphore(OPENING)

    async def one() -> None:
        async with gate:
            writers.append(await _open_stream(port))

    await asyncio.gather(*(one() for _ in range(count)))


@dataclass
class StreamResult:
    asked: int
    opened: int
    hard_limit: int
    proxy_idle_mib: float  # before any stream
    proxy_mib: float  # with every stream open
    proxy_kib_per_stream: float
    nginx_kib_per_stream: float | None


async def _measure_streams(stub: Stub, pid: int, port: int, count: int, warm: int) -> float:
    """RSS growth (KiB) of `pid` per stream while `count` streams are held through `port`,
    counted from when `warm` of them were open."""
    writers: list[asyncio.StreamWriter] = []
    try:
        await _hold_streams(port, warm, writers)
        await asyncio.sleep(0.5)
        before = _rss_kib(pid)
        await _hold_streams(port, count - warm, writers)
        await asyncio.sleep(1.0)
        growth = _rss_kib(pid) - before
        held = await stub.get("/stub/streams")
        if held < count:
            raise RuntimeError(f"only {held} of {count} streams reached the node")
        return growth / (count - warm)
    finally:
        await _release(stub)
        for writer in writers:
            writer.close()


async def idle_streams(count: int) -> StreamResult:
    hard = raise_open_files_limit()
    opened = max(2, min(count, (hard - FD_RESERVE) // 2))
    warm = max(1, min(100, opened // 10))
    nodes = -(-opened // SLOTS_PER_NODE)
    async with stub_fleet(nodes) as stub:
        settings = {
            # A slot for every stream: admission control lets them all through.
            "nodes": [
                {"url": f"http://127.0.0.1:{port}", "num_parallel": SLOTS_PER_NODE}
                for port in stub.ports
            ],
            # One client opens them all: the per-client cap (against slowloris) is lifted too.
            "limits": {
                "max_connections": opened + FD_RESERVE,
                "max_connections_per_client": opened + FD_RESERVE,
            },
        }
        async with proxy_process(settings) as (pid, url):
            idle = _rss_kib(pid) / 1024
            port = int(url.rsplit(":", 1)[1])
            per_stream = await _measure_streams(stub, pid, port, opened, warm)
            # Measured at the end of the run, all streams open (sampled before their release).
            full = idle + per_stream * opened / 1024
        nginx_per_stream = None
        if nginx.available():
            port = _free_port()
            urls = [f"http://127.0.0.1:{node}" for node in stub.ports]
            async with nginx.nginx(urls, port) as process:
                assert process.pid is not None
                nginx_per_stream = await _measure_streams(stub, process.pid, port, opened, warm)
    return StreamResult(count, opened, hard, idle, full, per_stream, nginx_per_stream)


async def _release(stub: Stub) -> None:
    async with aiohttp.ClientSession() as http, http.post(stub.url + "/stub/release") as response:
        await response.read()


async def benchmark(streams: int, fleets: list[int], interval: float) -> str:
    lines = [
        "| configured nodes (URLs only) | start-up until all up (s) | proxy RSS (MiB) "
        "| proxy CPU per probe (ms; share of a core) | probes in the busiest tenth of an interval "
        "(a tenth of the nodes if even) | selection per request, performance (us) |",
        "|---|---|---|---|---|---|",
    ]
    for count in fleets:
        fleet = await fleet_scale(count, interval)
        lines.append(
            f"| {count} | {fleet.startup_s:.2f} | {fleet.rss_mib:.0f} "
            f"| {fleet.cpu_ms_per_probe:.2f} ({fleet.cpu_ms_per_probe * count / interval / 10:.1f}%) "
            f"| {fleet.busiest_tenth} ({count / 10:g}) "
            f"| {fleet.selection_us:.0f} |"
        )
    result = await idle_streams(streams)
    lines += [
        "",
        "| idle streams | proxy RSS before / with them (MiB) | proxy per stream (KiB) "
        "| nginx per stream (KiB) | proxy / nginx |",
        "|---|---|---|---|---|",
    ]
    nginx_cell = ratio = "-"
    if result.nginx_kib_per_stream is not None:
        nginx_cell = f"{result.nginx_kib_per_stream:.1f}"
        if result.nginx_kib_per_stream > 0:
            ratio = f"{result.proxy_kib_per_stream / result.nginx_kib_per_stream:.1f}x"
    lines.append(
        f"| {result.opened} | {result.proxy_idle_mib:.0f} / {result.proxy_mib:.0f} "
        f"| {result.proxy_kib_per_stream:.1f} | {nginx_cell} | {ratio} |"
    )
    if result.opened < result.asked:
        lines.append(
            f"\n{result.opened} streams, not {result.asked}: the open-files hard limit here is "
            f"{result.hard_limit} and each stream holds two sockets in the proxy (client and "
            f"node); {result.asked} would take about "
            f"{result.proxy_idle_mib + result.proxy_kib_per_stream * result.asked / 1024:.0f} MiB"
        )
    return "\n".join(lines)


def run(
    streams: int = 10_000, fleets: tuple[int, ...] = (100, 1000), interval: float = 5.0
) -> None:
    print(asyncio.run(benchmark(streams, list(fleets), interval)))
