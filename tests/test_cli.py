"""The commands a newcomer runs: demo, simulate, bench. Started as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp
import orjson

from sollol_proxy.bench import nginx
from sollol_proxy.bench.overhead import benchmark
from tests.conftest import free_port


async def _start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sollol_proxy",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _get_when_up(url: str) -> bytes:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(url) as response:
                    return await response.read()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never answered")


async def _stop(process: asyncio.subprocess.Process) -> int:
    process.send_signal(signal.SIGINT)
    return await asyncio.wait_for(process.wait(), 10)


async def test_demo_serves_a_fleet_of_simulated_nodes() -> None:
    port = free_port()
    process = await _start(
        "demo", "--port", str(port), "--nodes", "2", "--token-delay", "0", "--load-delay", "0"
    )
    try:
        tags = orjson.loads(await _get_when_up(f"http://127.0.0.1:{port}/api/tags"))
        assert {m["name"] for m in tags["models"]} >= {
            "llama3.2:latest",
            "mistral:latest",
            "qwen2.5:7b",
        }
        async with aiohttp.ClientSession() as http:
            body = b'{"model":"mistral","messages":[{"role":"user","content":"hi"}],"stream":false}'
            async with http.post(f"http://127.0.0.1:{port}/api/chat", data=body) as response:
                assert response.status == 200 and response.headers["X-Sollol-Node"] == "sim-2"
    finally:
        assert await _stop(process) == 0


async def test_simulate_runs_one_node() -> None:
    port = free_port()
    process = await _start("simulate", "--port", str(port), "--model", "qwen2.5:7b")
    try:
        assert (
            orjson.loads(await _get_when_up(f"http://127.0.0.1:{port}/api/tags"))["models"][0][
                "name"
            ]
            == "qwen2.5:7b"
        )
    finally:
        assert await _stop(process) == 0


async def test_overhead_benchmark_produces_its_table() -> None:
    table = await benchmark(rounds=1, scale=0.02)
    rows = [row for row in table.splitlines() if row.startswith("|")]
    assert rows[0].startswith("| workload | direct p50 / p99 ms |") and len(rows) == 2 + 4
    assert len({row.count("|") for row in rows}) == 1
    if nginx.available() or os.environ.get("CI") == "true":  # .ci/run installs nginx
        assert "nginx p50 / p99 ms" in rows[0]
    else:
        assert "nginx is not installed" in table
    assert "per request" in table
