"""A batch job survives `kill -9` of the real proxy process (`python -m sollol_proxy -c ...`):
the restarted proxy resumes it, and every accepted document ends with exactly one result,
the vector a direct call gives. With the jobs shared over Redis, a second replica already
running takes the job up once the killed replica's lease lapses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from sollol_proxy.embed.merge import read_answer
from sollol_proxy.simulator import SimulatedNode
from tests.lifecycle.test_lifecycle import ProxyProcess
from tests.redisd import RedisServer

MODEL = "nomic-embed-text"
DOCS = [f"document {i}: " + "text " * (i % 9 + 1) for i in range(1200)]


@pytest.fixture
async def nodes() -> AsyncIterator[list[SimulatedNode]]:
    started = [
        SimulatedNode(name=n, models=[MODEL], prompt_tokens_per_s=3000.0, deterministic=True)
        for n in ("a", "b", "c")
    ]
    for node in started:
        await node.start(port=0)
    yield started
    for node in started:
        await node.stop()


async def _status(http: aiohttp.ClientSession, url: str, job: str) -> dict[str, object]:
    async with http.get(f"{url}/sollol/batches/{job}") as response:
        assert response.status == 200
        return orjson.loads(await response.read())


async def test_kill_9_loses_no_accepted_document(
    tmp_path: Path, nodes: list[SimulatedNode]
) -> None:
    settings = {"batch": {"data_dir": str(tmp_path / "data"), "min_batch": 8, "max_batch": 64}}
    first = ProxyProcess(tmp_path, nodes, **settings)
    await first.start()
    second = ProxyProcess(tmp_path, nodes, **settings)  # same file, same store, another port
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                first.url + "/api/embed/batch",
                data=orjson.dumps(
                    {"model": MODEL, "docs": [{"id": i, "text": t} for i, t in enumerate(DOCS)]}
                ),
            ) as response:
                assert response.status == 202
                job = orjson.loads(await response.read())["id"]
            for _ in range(500):  # until about a quarter is stored
                if (await _status(http, first.url, job))["done"] >= 300:
                    break
                await asyncio.sleep(0.02)
            assert first.process is not None
            first.process.kill()  # SIGKILL: no cleanup of any kind
            assert await first.wait() == -9
            midway = sum(n.stats.requests for n in nodes)
            await second.start()
            for _ in range(600):
                status = await _status(http, second.url, job)
                if status["status"] == "done":
                    break
                await asyncio.sleep(0.05)
            assert (status["status"], status["done"], status["failed"]) == ("done", 1200, 0)
            assert sum(n.stats.requests for n in nodes) > midway  # the second process finished it
            async with http.get(f"{second.url}/sollol/batches/{job}/results") as response:
                results = [orjson.loads(line) for line in (await response.read()).splitlines()]
            async with http.post(
                nodes[0].url + "/api/embed", data=orjson.dumps({"model": MODEL, "input": DOCS})
            ) as response:
                direct = orjson.loads(await response.read())["embeddings"]
        assert [r["index"] for r in results] == list(range(1200))
        assert [r["id"] for r in results] == list(range(1200))
        assert [r["embedding"] for r in results] == direct
        assert "resumes: " in second.log()
    finally:
        for proxy in (first, second):
            if proxy.process is not None and proxy.process.returncode is None:
                proxy.process.kill()
                await proxy.process.wait()


async def test_a_job_outlives_the_replica_running_it(
    tmp_path: Path, nodes: list[SimulatedNode], redis_server: RedisServer
) -> None:
    settings = {
        "batch": {"min_batch": 8, "max_batch": 64},
        "state": {"redis_url": redis_server.url, "lease_ttl": "1s"},
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = ProxyProcess(tmp_path / "a", nodes, **settings)
    second = ProxyProcess(tmp_path / "b", nodes, **settings)
    await first.start()
    await second.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                first.url + "/api/embed/batch",
                data=orjson.dumps(
                    {"model": MODEL, "docs": [{"id": i, "text": t} for i, t in enumerate(DOCS)]}
                ),
            ) as response:
                assert response.status == 202
                job = orjson.loads(await response.read())["id"]
            for _ in range(500):  # until about a quarter is stored, seen from the other replica
                status = await _status(http, second.url, job)
                if status["done"] >= 300:
                    break
                await asyncio.sleep(0.02)
            assert status["status"] == "running" and status["done"] < len(DOCS)
            assert (await _status(http, first.url, job))["total"] == len(DOCS)  # either replica
            assert "resumes" not in second.log()  # the first replica holds the job
            assert first.process is not None
            first.process.kill()  # SIGKILL: no cleanup, the lease is left to lapse
            assert await first.wait() == -9
            midway = sum(n.stats.requests for n in nodes)
            for _ in range(600):
                status = await _status(http, second.url, job)
                if status["status"] == "done":
                    break
                await asyncio.sleep(0.05)
            assert (status["status"], status["done"], status["failed"]) == ("done", 1200, 0)
            assert sum(n.stats.requests for n in nodes) > midway  # the second replica went on
            async with http.get(f"{second.url}/sollol/batches/{job}/results") as response:
                lines = (await response.read()).splitlines()
            async with http.post(
                nodes[0].url + "/api/embed", data=orjson.dumps({"model": MODEL, "input": DOCS})
            ) as response:
                direct = read_answer("/api/embed", await response.read()).vectors
        results = [orjson.loads(line) for line in lines]
        assert [r["index"] for r in results] == list(range(1200))
        assert [r["id"] for r in results] == list(range(1200))
        # Byte for byte: each line carries the vector's JSON exactly as the node wrote it.
        assert lines == [
            b'{"index":%d,"id":%d,"embedding":%s}' % (i, i, vector)
            for i, vector in enumerate(direct)
        ]
        assert f"batch job {job} resumes: " in second.log()
    finally:
        for proxy in (first, second):
            if proxy.process is not None and proxy.process.returncode is None:
                proxy.process.kill()
                await proxy.process.wait()
