"""Embedding throughput through the proxy, against the baselines a client could use itself.

Four simulated nodes with `nomic-embed-text` (one slot each, as Ollama gives an embedding
model) embed at `RATE` prompt tokens per second. A real `sollol-proxy` process (uvloop) is
given their URLs and nothing else (plus a temporary data directory and the coalescing switch
of workload c). One run, ratios within it:

- (a) one client, 2048 documents in calls of 512: the proxy against one node directly;
- (b) eight clients, calls of 16: the proxy against client-side round robin and a client-side
  least-connections pick over the four nodes;
- (c) coalescing on and off: 32 clients in calls of 4, and the workload of (b).

(a) to (c) are medians of `rounds` rounds in which the loads take turns.
- (d) one 10,000-document batch job: its rate, then the same job with the proxy killed
  (`kill -9`) midway and restarted: every accepted document must end with exactly one stored
  result, equal to the node's own answer for it.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from sollol_proxy.bench.overhead import _free_port
from sollol_proxy.simulator import SimulatedNode

MODEL = "nomic-embed-text"
RATE = 20000.0  # prompt tokens per second per node: ~400 documents of ~50 tokens
NODES = 4


def documents(count: int) -> list[str]:
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "searching",
        "for",
        "embeddings",
    ]
    return [
        f"doc {i}: " + " ".join(words[(i + k) % len(words)] for k in range(30 + i % 20))
        for i in range(count)
    ]


@dataclass
class Proxy:
    url: str
    process: asyncio.subprocess.Process
    config: Path

    async def stop(self, kill: bool = False) -> None:
        if self.process.returncode is None:
            self.process.kill() if kill else self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 30)


def config_file(nodes: list[SimulatedNode], data: Path, coalesce: bool, port: int) -> Path:
    """The node URLs and nothing else, but for the port, the data directory and coalescing."""
    data.mkdir(parents=True, exist_ok=True)
    config = data / f"sollol-{port}.yaml"
    urls = ", ".join(f"'{n.url}'" for n in nodes)
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\nnodes: [{urls}]\nlog_level: warning\n"
        f"embed: {{coalesce: {str(coalesce).lower()}}}\nbatch: {{data_dir: '{data}'}}\n"
    )
    return config


async def start_proxy(nodes: list[SimulatedNode], data: Path, coalesce: bool, port: int) -> Proxy:
    config = config_file(nodes, data, coalesce, port)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sollol_proxy", "-c", str(config)
    )
    proxy = Proxy(f"http://127.0.0.1:{port}", process, config)
    async with aiohttp.ClientSession() as http:
        for _ in range(400):
            if process.returncode is not None:
                raise RuntimeError("the proxy exited during startup")
            try:
                async with http.get(proxy.url + "/sollol/nodes") as response:
                    nodes_seen = orjson.loads(await response.read())["nodes"]
                    if sum(MODEL + ":latest" in n["models"] for n in nodes_seen) == len(nodes):
                        return proxy
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("the proxy did not become ready")


# Where a client sends its next call, given the calls in flight per URL.
Pick = Callable[[dict[str, int]], str]


async def embed_load(
    http: aiohttp.ClientSession, docs: list[str], clients: int, size: int, pick: Pick
) -> float:
    """Documents per second for `clients` clients sending `docs` in calls of `size`."""
    calls = iter([docs[i : i + size] for i in range(0, len(docs), size)])
    busy: dict[str, int] = {}

    async def client() -> None:
        for call in calls:
            url = pick(busy)
            busy[url] = busy.get(url, 0) + 1
            try:
                body = orjson.dumps({"model": MODEL, "input": call})
                async with http.post(url + "/api/embed", data=body) as response:
                    answer = await response.read()
                    assert response.status == 200, answer[:200]
                    assert len(orjson.loads(answer)["embeddings"]) == len(call)
            finally:
                busy[url] -= 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(docs) / (time.perf_counter() - started)


def only(url: str) -> Pick:
    return lambda busy: url


def least_connections(urls: list[str]) -> Pick:
    """Client-side least connections: the node with the fewest calls in flight."""
    return lambda busy: min(urls, key=lambda u: busy.get(u, 0))


def round_robin(urls: list[str]) -> Pick:
    turn = itertools.cycle(urls)
    return lambda busy: next(turn)


async def job(http: aiohttp.ClientSession, url: str, docs: list[str]) -> str:
    payload = {"model": MODEL, "docs": [{"id": i, "text": d} for i, d in enumerate(docs)]}
    async with http.post(url + "/api/embed/batch", data=orjson.dumps(payload)) as response:
        assert response.status == 202
        return orjson.loads(await response.read())["id"]


async def job_status(http: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, object]:
    async with http.get(f"{url}/sollol/batches/{job_id}") as response:
        return orjson.loads(await response.read())


async def until(http: aiohttp.ClientSession, url: str, job_id: str, done: int) -> float:
    """Seconds until the job has `done` documents with a result, or is over."""
    started = time.perf_counter()
    while True:
        status = await job_status(http, url, job_id)
        settled = int(status["done"]) + int(status["failed"])  # type: ignore[call-overload]
        if settled >= done or status["status"] in ("done", "failed", "cancelled"):
            return time.perf_counter() - started
        await asyncio.sleep(0.02)


async def medians(rounds: int, **loads: Callable[[], Awaitable[float]]) -> dict[str, float]:
    """Each load's median over `rounds` rounds, the loads taking turns within a round, so that
    the machine's noise falls on all of them alike."""
    seen: dict[str, list[float]] = {name: [] for name in loads}
    for _ in range(rounds):
        for name, load in loads.items():
            seen[name].append(await load())
    return {name: statistics.median(values) for name, values in seen.items()}


async def benchmark(scale: float = 1.0, rounds: int = 3) -> str:
    count = max(64, int(2048 * scale))
    job_docs = documents(max(128, int(10_000 * scale)))
    docs = job_docs[:count]
    nodes = [
        SimulatedNode(name=f"n{i}", models=[MODEL], prompt_tokens_per_s=RATE, deterministic=True)
        for i in range(NODES)
    ]
    for node in nodes:
        await node.start(port=0)
    urls = [n.url for n in nodes]
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        plain = await start_proxy(nodes, data / "off", False, _free_port())
        merged = await start_proxy(nodes, data / "on", True, _free_port())
        try:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                for target in (*urls, plain.url, merged.url):  # load the model, warm connections
                    await embed_load(http, docs[:64], 4, 16, only(target))
                size = min(512, max(16, count // 4))
                a = await medians(
                    rounds,
                    direct=lambda: embed_load(http, docs, 1, size, only(urls[0])),
                    split=lambda: embed_load(http, docs, 1, size, only(plain.url)),
                )
                direct = a["direct"]
                lines.append(
                    _row(f"(a) 1 client, calls of {size}", "one node directly", direct, a["split"])
                )
                b = await medians(
                    rounds,
                    rr=lambda: embed_load(http, docs, 8, 16, round_robin(urls)),
                    lc=lambda: embed_load(http, docs, 8, 16, least_connections(urls)),
                    off=lambda: embed_load(http, docs, 8, 16, only(plain.url)),
                    on=lambda: embed_load(http, docs, 8, 16, only(merged.url)),
                )
                name, best = (
                    ("round robin", b["rr"])
                    if b["rr"] >= b["lc"]
                    else (
                        "least connections",
                        b["lc"],
                    )
                )
                for mode in ("off", "on"):
                    lines.append(
                        _row(
                            f"(b) 8 clients, calls of 16 (coalescing {mode})",
                            f"client-side {name}",
                            best,
                            b[mode],
                        )
                    )
                lines.append(
                    f"| (b) | round robin {b['rr']:.0f}, least connections {b['lc']:.0f} "
                    "docs/s | | | |"
                )
                c = await medians(
                    rounds,
                    off=lambda: embed_load(http, docs, 32, 4, only(plain.url)),
                    on=lambda: embed_load(http, docs, 32, 4, only(merged.url)),
                )
                lines.append(
                    _row("(c) 32 clients, calls of 4", "coalescing off", c["off"], c["on"])
                )
                lines.append(
                    _row("(c) 8 clients, calls of 16", "coalescing off", b["off"], b["on"])
                )
                lines.extend(await _jobs(http, plain, nodes, data, job_docs, direct))
        finally:
            for proxy in (plain, merged):
                await proxy.stop()
            for node in nodes:
                await node.stop()
    header = "| workload | baseline | baseline docs/s | via proxy docs/s | ratio |\n|---|---|---|---|---|"
    return header + "\n" + "\n".join(lines)


async def _jobs(
    http: aiohttp.ClientSession,
    plain: Proxy,
    nodes: list[SimulatedNode],
    data: Path,
    docs: list[str],
    direct: float,
) -> list[str]:
    total = len(docs)
    first = await job(http, plain.url, docs)
    seconds = await until(http, plain.url, first, total)
    lines = [
        _row(f"(d) batch job, {total} documents", "one node directly", direct, total / seconds)
    ]
    # The same job again; the proxy is killed when about half of it is stored, then restarted.
    second = await job(http, plain.url, docs)
    await until(http, plain.url, second, total // 2)
    sent_before = sum(n.stats.requests for n in nodes)
    await plain.stop(kill=True)
    stored = int((await _read_status(data / "off", second))["done"])
    restarted = await start_proxy(nodes, data / "off", False, _free_port())
    try:
        await until(http, restarted.url, second, total)
        async with http.get(f"{restarted.url}/sollol/batches/{second}/results") as response:
            results = [orjson.loads(line) for line in (await response.read()).splitlines()]
        status = await job_status(http, restarted.url, second)
    finally:
        await restarted.stop()
    expected = []
    for i in range(0, total, 512):
        body = orjson.dumps({"model": MODEL, "input": docs[i : i + 512]})
        async with http.post(nodes[0].url + "/api/embed", data=body) as response:
            expected += orjson.loads(await response.read())["embeddings"]
    exact = (
        [r["index"] for r in results] == list(range(total))
        and [r.get("embedding") for r in results] == expected
        and status["done"] == total
    )
    lines.append(
        f"| (d) kill -9 at {stored}/{total} stored, restart | every document one result, "
        f"equal to a direct call's | {'yes' if exact else 'NO'} | "
        f"{status['done']} done, {status['failed']} failed | "
        f"{sum(n.stats.requests for n in nodes) - sent_before} sub-batches after the restart |"
    )
    return lines


async def _read_status(data: Path, job_id: str) -> dict[str, object]:
    """The job as the store holds it after the kill (read with the stdlib, like the proxy)."""

    def read() -> dict[str, object]:
        with sqlite3.connect(data / "batches.sqlite3") as db:
            done, failed = db.execute(
                "SELECT done, failed FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return {"done": done, "failed": failed}

    return await asyncio.to_thread(read)


def _row(workload: str, baseline: str, base: float, proxied: float) -> str:
    return f"| {workload} | {baseline} | {base:.0f} | {proxied:.0f} | {proxied / base:.2f}x |"


def run(scale: float = 1.0, rounds: int = 3) -> None:
    print(asyncio.run(benchmark(scale, rounds)))
