"""A replica killed with `kill -9` mid-stream: its own clients see a cut connection, the other
replicas' streams go on, and its slots come back to them within the lease expiry."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from sollol_proxy.app import PROXY
from sollol_proxy.config import load_config
from sollol_proxy.server import start_proxy
from sollol_proxy.simulator import SimulatedNode
from tests.conftest import TEST_SETTINGS, eventually, free_port
from tests.redisd import RedisServer

MODEL = "llama3.2"
LEASE_TTL = 1.5
KEY = f"sollol:slots:a|{MODEL}:latest"


async def stream(http: aiohttp.ClientSession, url: str, prompt: str, tokens: int) -> list[bytes]:
    """The NDJSON lines received; raises when the connection is cut."""
    lines = []
    async with http.post(
        url + "/api/generate",
        json={"model": MODEL, "prompt": prompt, "options": {"num_predict": tokens}},
    ) as response:
        assert response.status == 200
        async for line in response.content:
            lines.append(line)
    return lines


async def ready(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url + "/metrics") as response:
            return "sollol_shared_state_up 1.0" in await response.text()
    except aiohttp.ClientError:
        return False


async def test_a_killed_replica_loses_only_its_streams_and_its_slots_come_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    node = SimulatedNode(name="a", models=[MODEL], num_parallel=3, token_delay=0.05)
    await node.start(port=0)
    port = free_port()
    config = tmp_path / "sollol.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"nodes: [{{url: '{node.url}', name: a, num_parallel: 3}}]\n"
        f"state: {{redis_url: '{redis_server.url}', lease_ttl: {LEASE_TTL}}}\n"
        f"batch: {{data_dir: '{tmp_path}'}}\nlog_level: warning\n"
    )
    # A real process, as an orchestrator runs it, so that kill -9 is what it is.
    doomed = subprocess.Popen([sys.executable, "-m", "sollol_proxy", "-c", str(config)])  # noqa: ASYNC220
    survivor = await start_proxy(
        load_config(
            None,
            env={},
            overrides={
                **TEST_SETTINGS,
                "nodes": [{"url": node.url, "name": "a", "num_parallel": 3}],
                "state.redis_url": redis_server.url,
                "state.lease_ttl": LEASE_TTL,
                "batch.data_dir": str(tmp_path),
            },
        )
    )
    doomed_url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while not await ready(http, doomed_url):
                assert doomed.poll() is None and time.monotonic() < deadline
                await asyncio.sleep(0.1)
            # Three slots: two streams through the replica about to die, one through the other.
            cut = [asyncio.create_task(stream(http, doomed_url, f"cut {i}", 400)) for i in (1, 2)]
            await eventually(lambda: node.in_flight() == 2, 10)
            kept = asyncio.create_task(stream(http, survivor.url, "kept", 60))
            await eventually(lambda: node.in_flight() == 3, 10)
            shared = survivor.runner.app[PROXY].shared
            assert shared is not None
            redis = shared.link.client
            held = await redis.hgetall(KEY)
            assert sorted(int(v) for v in held.values()) == [1, 2], held

            os.kill(doomed.pid, signal.SIGKILL)
            killed = time.monotonic()
            doomed.wait()
            started: list[float] = []

            async def first_byte(prompt: str) -> None:
                async with http.post(
                    survivor.url + "/api/generate",
                    json={"model": MODEL, "prompt": prompt, "options": {"num_predict": 10}},
                ) as response:
                    await response.content.readline()
                    started.append(time.monotonic() - killed)
                    await response.read()

            # Two new requests through the survivor need the dead replica's two slots.
            new = [asyncio.create_task(first_byte(f"new {i}")) for i in (1, 2)]
            # Its clients see the connection cut: an error, not a stream that ends normally
            # (chunked framing never got its last chunk, so no client mistakes it for a
            # complete answer). No in-stream error line can come from a dead process.
            for task in cut:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await task
            # The slots come back within the lease expiry (plus a renewal period of slack),
            # while the other replica's stream still runs.
            await asyncio.gather(*new)
            assert len(started) == 2 and max(started) < LEASE_TTL + LEASE_TTL / 3 + 0.5, started
            assert not kept.done()
            # The other replica's stream goes on to its final object.
            lines = await kept
            assert orjson.loads(lines[-1])["done"] is True
            await eventually(lambda: node.in_flight() == 0)
            held = await redis.hgetall(KEY)
            assert sum(int(v) for v in held.values()) == 0 and len(held) <= 1, held
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait()
        await survivor.stop()
        await node.stop()
