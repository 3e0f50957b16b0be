"""Batch jobs kept in Redis (`state.redis_url`), over real sockets: two replicas in front of the
same nodes see the same jobs, either one cancels a job the other runs, and Redis going away
refuses new jobs with a clear 503 while every ordinary request still succeeds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from sollol_proxy.app import JOBS
from sollol_proxy.server import RunningProxy, start_proxy
from tests.conftest import ClusterFactory, eventually
from tests.embed.test_jobs import MODEL, _direct, _docs, _finished, _fleet, _json
from tests.redisd import RedisServer


@pytest.fixture
async def replicas() -> AsyncIterator[list[RunningProxy]]:
    """Further replicas a test starts; stopped at its end."""
    started: list[RunningProxy] = []
    yield started
    for proxy in started:
        await proxy.stop()


async def _raw_results(http: aiohttp.ClientSession, url: str, job: str) -> bytes:
    async with http.get(f"{url}/sollol/batches/{job}/results") as response:
        assert response.status == 200
        return await response.read()


async def test_two_replicas_share_the_jobs(
    cluster: ClusterFactory,
    http: aiohttp.ClientSession,
    redis_server: RedisServer,
    replicas: list[RunningProxy],
) -> None:
    first = await _fleet(cluster, state__redis_url=redis_server.url)
    second = await start_proxy(first.config)  # the same nodes and Redis, another port
    replicas.append(second)
    docs = [{"id": i, "text": t} for i, t in enumerate(_docs(400))]
    status, job = await _json(
        http, "POST", first.url + "/api/embed/batch", {"model": MODEL, "docs": docs}
    )
    assert status == 202
    final = await _finished(http, second.url, job["id"])  # followed on the other replica
    assert (final["status"], final["done"], final["failed"]) == ("done", 400, 0)
    raw = await _raw_results(http, second.url, job["id"])
    assert raw == await _raw_results(http, first.url, job["id"])
    results = [orjson.loads(line) for line in raw.splitlines()]
    assert [r["id"] for r in results] == list(range(400))
    assert [r["embedding"] for r in results] == await _direct(http, first.nodes[0].url, _docs(400))
    for url in (first.url, second.url):
        status, listing = await _json(http, "GET", url + "/api/batch-status")
        assert status == 200 and [j["id"] for j in listing["jobs"]] == [job["id"]]
    status, detail = await _json(http, "GET", f"{first.url}/sollol/batches/{job['id']}")
    assert status == 200 and detail["errors"] == []
    # The other replica's dashboard shows the job it did not run, as it ended.
    shown = second.runner.app[JOBS]
    await eventually(lambda: job["id"] in shown.jobs and shown.jobs[job["id"]].over)
    status, page = await _json(http, "GET", second.url + "/sollol/dashboard")
    assert [(b["id"], b["status"], b["done"]) for b in page["batches"]] == [
        (job["id"], "done", 400)
    ]


async def test_a_replica_cancels_the_job_another_runs(
    cluster: ClusterFactory,
    http: aiohttp.ClientSession,
    redis_server: RedisServer,
    replicas: list[RunningProxy],
) -> None:
    first = await _fleet(cluster, rate=2000.0, state__redis_url=redis_server.url)
    second = await start_proxy(first.config)
    replicas.append(second)
    status, job = await _json(
        http, "POST", first.url + "/api/embed/batch", {"model": MODEL, "input": _docs(3000)}
    )
    assert status == 202
    runner = first.proxy.runner.app[JOBS]
    await eventually(lambda: runner.note(job["id"]) is None and runner.jobs[job["id"]].done > 0)
    status, cancelled = await _json(http, "DELETE", f"{second.url}/sollol/batches/{job['id']}")
    assert status == 200 and cancelled["status"] == "cancelled"
    await eventually(lambda: runner._run is None, within=5)  # the first replica stopped it
    sent = sum(n.stats.requests for n in first.nodes)
    status, final = await _json(http, "GET", f"{first.url}/sollol/batches/{job['id']}")
    assert final["status"] == "cancelled" and 0 < final["done"] < 3000
    assert sum(n.stats.requests for n in first.nodes) == sent  # nothing more was sent


async def test_redis_away_refuses_new_jobs_and_fails_no_other_request(
    cluster: ClusterFactory, http: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    c = await _fleet(cluster, state__redis_url=redis_server.url)
    redis_server.stop()
    async with http.post(
        c.url + "/api/embed/batch", data=orjson.dumps({"model": MODEL, "input": ["x"]})
    ) as response:
        assert response.status == 503
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        error = orjson.loads(await response.read())["error"]
    assert f"Redis at {redis_server.url} (state.redis_url)" in error and "try again later" in error
    status, listing = await _json(http, "GET", c.url + "/sollol/batches")
    assert status == 503 and "Redis" in listing["error"]
    status, answer = await _json(http, "POST", c.url + "/api/embed", {"model": MODEL, "input": "x"})
    assert status == 200 and len(answer["embeddings"]) == 1
    status, _ = await _json(http, "GET", c.url + "/sollol/health")
    assert status == 200
    redis_server.start()  # back: jobs are accepted and run again
    status, job = await _json(
        http, "POST", c.url + "/api/embed/batch", {"model": MODEL, "input": _docs(50)}
    )
    assert status == 202
    final = await _finished(http, c.url, job["id"])
    assert (final["status"], final["done"]) == ("done", 50)


async def test_a_replica_that_stops_hands_its_job_over_at_once(
    cluster: ClusterFactory,
    http: aiohttp.ClientSession,
    redis_server: RedisServer,
    replicas: list[RunningProxy],
) -> None:
    """SIGTERM's path gives the lease back: the other replica goes on within its next look,
    long before the lease (a minute here) would have lapsed."""
    first = await _fleet(
        cluster, rate=2000.0, state__redis_url=redis_server.url, state__lease_ttl=60
    )
    second = await start_proxy(first.config)
    replicas.append(second)
    docs = _docs(1200)
    status, job = await _json(
        http, "POST", first.url + "/api/embed/batch", {"model": MODEL, "input": docs}
    )
    assert status == 202
    runner = first.proxy.runner.app[JOBS]
    await eventually(lambda: runner.jobs[job["id"]].done > 0)
    await first.proxy.stop()
    final = await _finished(http, second.url, job["id"], within=30)
    assert (final["status"], final["done"], final["failed"]) == ("done", 1200, 0)
    raw = await _raw_results(http, second.url, job["id"])
    vectors = [orjson.loads(line)["embedding"] for line in raw.splitlines()]
    assert vectors == await _direct(http, first.nodes[0].url, docs)
