"""The commands a newcomer runs: demo, simulate, bench. Started as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

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
        "demo",
        *("--host", "127.0.0.1", "--port", str(port), "--nodes", "2"),
        *("--token-delay", "0", "--load-delay", "0"),
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


async def _run_to_end(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sollol_proxy",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something else is listening on (an Ollama, typically)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "command",
    [
        ["--host", "127.0.0.1", "--port", "{port}", "--node", "127.0.0.1:9"],
        ["demo", "--host", "127.0.0.1", "--port", "{port}", "--nodes", "1"],
        ["simulate", "--host", "127.0.0.1", "--port", "{port}"],
    ],
    ids=["proxy", "demo", "simulate"],
)
async def test_a_port_in_use_is_one_line_that_names_it(taken_port: int, command: list[str]) -> None:
    code, stderr = await _run_to_end(*(arg.format(port=taken_port) for arg in command))
    assert code == 2
    assert stderr == (
        f"sollol-proxy: cannot listen on 127.0.0.1:{taken_port}: address already in use "
        "(is Ollama or another sollol-proxy running there?); choose another with --port\n"
    )


async def test_a_metrics_port_in_use_is_one_line_too(taken_port: int) -> None:
    code, stderr = await _run_to_end(
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--node",
        "127.0.0.1:9",
        env={"SOLLOL_METRICS_PORT": str(taken_port)},
    )
    assert code == 2
    assert stderr == (
        f"sollol-proxy: cannot listen on 127.0.0.1:{taken_port}: address already in use "
        "(is Ollama or another sollol-proxy running there?); "
        "choose another with metrics.port (SOLLOL_METRICS_PORT)\n"
    )


async def test_an_address_that_is_not_this_machines_is_one_line_too() -> None:
    code, stderr = await _run_to_end("--host", "192.0.2.1", "--port", "0", "--node", "a")
    assert (code, stderr) == (
        2,
        "sollol-proxy: cannot listen on 192.0.2.1:0: that address is not one of this "
        "machine's; check --host\n",
    )


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["simulate", "--port", "99999"], "Invalid value for '--port'"),
        (["simulate", "--num-parallel", "0"], "Invalid value for '--num-parallel'"),
        (["demo", "--port", "99999"], "Invalid value for '--port'"),
        (["demo", "--nodes", "0"], "Invalid value for '--nodes'"),
        (["demo", "--token-delay", "-1"], "Invalid value for '--token-delay'"),
        (["demo", "--host", ""], "configuration error: command line: listen.host: expected"),
    ],
)
async def test_a_bad_flag_of_demo_or_simulate_is_a_usage_error(
    command: list[str], said: str
) -> None:
    """They were tracebacks (OverflowError from bind, ConfigError from the demo's config)."""
    code, stderr = await _run_to_end(*command)
    assert code == 2 and said in stderr and "Traceback" not in stderr, stderr
