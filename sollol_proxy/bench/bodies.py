"""Large hostile bodies against a real `sollol-proxy` process: how long its event loop stalls and
how much memory it takes, and whether its nodes stay up (issue #14's probe: a 60 MiB body of
tiny values took 2 GB and stalled the loop for seconds, so that healthy nodes were ejected).

The proxy and two simulated nodes run as processes of their own, so that the figures are the
proxy's alone: the loop's stall is the worst latency of `/api/version` (which the proxy answers
itself) probed every 20 ms, the memory its resident set from /proc. `pythonpath` runs the proxy
from another source tree, to compare with an earlier commit in the same run.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from sollol_proxy.bench.overhead import _free_port
from sollol_proxy.bench.tasks import stop

MIB = 2**20
SLICE = 256 * 1024  # the client sends in slices, so that its own loop never stalls the probes


def dense(size: int) -> bytes:
    """`{}` objects: about 30 bytes of Python objects for each byte, if built."""
    head, tail = b'{"model":"llama3.2","messages":[', b'{}],"stream":false}'
    return head + b"{}," * ((size - len(head) - len(tail)) // 3) + tail


def one_string(size: int) -> bytes:
    """One long message, as a chat with a pasted document or an image would send."""
    head = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"'
    return head + b"a" * (size - len(head) - 4) + b'"}]}'


@dataclass(frozen=True)
class Shape:
    name: str
    body: Callable[[int], bytes]
    copies: int = 1
    gzip: bool = False


SHAPES = [
    Shape("tiny values (`{}` objects)", dense),
    Shape("one long string", one_string),
    Shape("one long string, three at once", one_string, copies=3),
    Shape("tiny values, gzip", dense, gzip=True),
]


@dataclass
class Result:
    statuses: list[int]
    seconds: float
    worst_ms: float
    rss_mib: float
    nodes_down: int


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def _ready(http: aiohttp.ClientSession, url: str, path: str) -> None:
    for _ in range(400):
        try:
            async with http.get(url + path) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def _send(http: aiohttp.ClientSession, url: str, body: bytes, zipped: bool) -> int:
    async def slices() -> AsyncIterator[bytes]:
        view = memoryview(body)
        for start in range(0, len(body), SLICE):
            yield bytes(view[start : start + SLICE])

    headers = {"Content-Length": str(len(body))}
    if zipped:
        headers["Content-Encoding"] = "gzip"
    async with http.post(url + "/api/chat", data=slices(), headers=headers) as response:
        await response.read()
        return response.status


async def _measure(
    http: aiohttp.ClientSession, url: str, pid: int, shape: Shape, size: int
) -> Result:
    body = shape.body(size)
    if shape.gzip:
        body = gzip.compress(body, 9)
    base = peak = _rss(pid)
    worst = 0.0

    async def probe() -> None:
        nonlocal peak, worst
        while True:
            started = time.monotonic()
            async with http.get(url + "/api/version") as response:
                await response.read()
            worst = max(worst, time.monotonic() - started)
            peak = max(peak, _rss(pid))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(probe())
    started = time.monotonic()
    statuses = await asyncio.gather(
        *(_send(http, url, body, shape.gzip) for _ in range(shape.copies))
    )
    seconds = time.monotonic() - started
    await asyncio.sleep(1.0)  # probes that timed out while the loop stalled show up by now
    await stop(task)
    async with http.get(url + "/sollol/nodes") as response:
        nodes = (await response.json())["nodes"]
    down = sum(node["health"]["state"] != "up" for node in nodes)
    return Result(list(statuses), seconds, worst * 1000, (peak - base) / MIB, down)


async def benchmark(size: int, pythonpath: str | None) -> str:
    processes: list[asyncio.subprocess.Process] = []
    config = Path(tempfile.mkdtemp()) / "sollol.yaml"
    try:
        async with aiohttp.ClientSession() as http:
            nodes = []
            for _ in range(2):
                port = _free_port()
                processes.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "sollol_proxy", "simulate", "--port", str(port),
                        "--model", "llama3.2:latest", "--token-delay", "0", "--load-delay", "0",
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                    )
                )  # fmt: skip
                nodes.append(f"http://127.0.0.1:{port}")
                await _ready(http, nodes[-1], "/api/version")
            port = _free_port()
            config.write_text(
                f"listen: {{host: 127.0.0.1, port: {port}}}\nnodes: [{', '.join(nodes)}]\n"
                "health: {interval: 0.5s, timeout: 1s}\nlog_level: warning\n"
            )
            env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
            proxy = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sollol_proxy", "-c", str(config), env=env,
                cwd=config.parent, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            processes.append(proxy)
            url = f"http://127.0.0.1:{port}"
            await _ready(http, url, "/api/version")
            lines = []
            for shape in SHAPES:
                result = await _measure(http, url, proxy.pid, shape, size)
                lines.append(
                    f"| {shape.name} | {size // MIB} MiB x {shape.copies} |"
                    f" {', '.join(map(str, result.statuses))} | {result.seconds:.2f} |"
                    f" {result.worst_ms:.0f} | {result.rss_mib:+.0f} | {result.nodes_down} |"
                )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await asyncio.wait_for(process.wait(), 10)
        config.unlink(missing_ok=True)
    header = (
        "| body | size | status | seconds | worst /api/version ms | proxy RSS MiB "
        "| nodes down after |\n|---|---|---|---|---|---|---|"
    )
    return header + "\n" + "\n".join(lines)


def run(size_mib: int = 60, pythonpath: str | None = None) -> None:
    print(asyncio.run(benchmark(size_mib * MIB, pythonpath)))
