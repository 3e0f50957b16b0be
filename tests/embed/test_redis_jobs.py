"""The job store in Redis on its own, against a real redis-server: the same promises as the
SQLite store (a result is written once, read back in order, bounds, failure, expiry), leases that
one replica holds at a time, and a clear 503 when Redis does not answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from sollol_proxy.config.policies import StatePolicy
from sollol_proxy.embed.redis_jobs import RedisJobs
from sollol_proxy.embed.store import Job, Result, StoreError, StoreFull
from tests.redisd import RedisServer


def _job(job_id: str, total: int, created: float = 1.0) -> Job:
    return Job(job_id, "m", b'{"model":"m"}', "queued", created, None, None, total, 0, 0, None)


def _policy(url: str, lease_ttl: float = 10.0) -> StatePolicy:
    return StatePolicy(backend="redis", redis_url=url, key_prefix="t:", lease_ttl=lease_ttl)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisJobs]:
    jobs = RedisJobs(_policy(redis_server.url))
    yield jobs
    await jobs.close()


async def test_results_are_written_once_and_read_in_order(store: RedisJobs) -> None:
    docs = [(b"1", "w"), (b'"two"', "x"), (None, "y"), (None, "zé")]
    await store.create(_job("a", 4), docs, max_total=10)
    assert await store.pending("a", 0, 10) == [(0, "w"), (1, "x"), (2, "y"), (3, "zé")]
    await store.store("a", [(0, b"[0.1]"), (2, b"[0.3]")])
    await store.store("a", [(0, b"[9.9]")], [(2, "late error")])  # already stored: ignored
    assert await store.results("a", 0, 10) == [Result(0, b"1", b"[0.1]", None)]  # stops at 1
    assert await store.pending("a", 0, 10) == [(1, "x"), (3, "zé")]
    assert await store.pending("a", 2, 1) == [(3, "zé")]
    await store.store("a", [(1, b"[0.2]")], [(3, "too long")])
    assert await store.results("a", 1, 10) == [
        Result(1, b'"two"', b"[0.2]", None),
        Result(2, None, b"[0.3]", None),
        Result(3, None, None, "too long"),
    ]
    assert await store.results("a", 1, 2) == (await store.results("a", 1, 10))[:2]
    job = await store.job("a")
    assert job is not None and (job.done, job.failed) == (3, 1)
    assert await store.errors("a", 5) == [("too long", 1)]
    assert await store.pending("a", 0, 10) == []


async def test_a_job_is_seen_by_another_replica_as_stored(
    store: RedisJobs, redis_server: RedisServer
) -> None:
    other = RedisJobs(_policy(redis_server.url))
    try:
        job = replace(_job("a", 2, created=12.5), started=13.0, error="x")
        await store.create(job, [(None, "x"), (None, "y")], max_total=10)
        assert await other.job("a") == job
        assert await other.job("nope") is None
    finally:
        await other.close()


async def test_the_total_bound_counts_every_stored_document(store: RedisJobs) -> None:
    await store.create(_job("a", 6), [(None, "x")] * 6, max_total=10)
    with pytest.raises(StoreFull) as full:
        await store.create(_job("b", 5), [(None, "x")] * 5, max_total=10)
    assert full.value.stored == 6 and await store.job("b") is None  # nothing of it was stored
    await store.delete("a")
    await store.create(_job("b", 5), [(None, "x")] * 5, max_total=10)
    assert await store.pending("a", 0, 10) == []  # a deleted job leaves nothing behind


async def test_a_failed_job_gives_every_pending_document_its_error(store: RedisJobs) -> None:
    await store.create(_job("a", 3), [(None, "x")] * 3, max_total=10)
    await store.store("a", [(0, b"[1]")])
    await store.fail_pending("a", "model gone", at=5.0)
    job = await store.job("a")
    assert job is not None and (job.status, job.done, job.failed, job.error) == (
        "failed",
        1,
        2,
        "model gone",
    )
    assert [r.error for r in await store.results("a", 0, 10)] == [None, "model gone", "model gone"]


async def test_a_job_that_is_over_stays_over(store: RedisJobs) -> None:
    await store.create(_job("a", 1), [(None, "x")], max_total=10)
    await store.set_status("a", "running", at=1.0)
    await store.set_status("a", "cancelled", at=2.0)
    await store.set_status("a", "done", at=3.0)  # a run that ended as it was cancelled
    job = await store.job("a")
    assert job is not None and (job.status, job.started, job.finished) == ("cancelled", 1.0, 2.0)


async def test_finished_jobs_expire_and_unfinished_ones_resume(store: RedisJobs) -> None:
    now = time.time()
    for job_id, created in (("old", 1.0), ("new", 2.0), ("open", 3.0), ("next", 4.0)):
        await store.create(_job(job_id, 1, created), [(None, "x")], max_total=10)
    await store.set_status("old", "done", at=now - 100)
    await store.set_status("new", "done", at=now)
    await store.set_status("open", "running", at=now)
    assert await store.expire(now - 50) == ["old"]
    assert [j.id for j in await store.jobs(10)] == ["next", "open", "new"]
    assert [j.id for j in await store.unfinished(10)] == ["open", "next"]  # oldest first
    assert [j.id for j in await store.unfinished(1)] == ["open"]


async def test_one_replica_holds_a_job_until_its_lease_lapses(redis_server: RedisServer) -> None:
    first, second = (RedisJobs(_policy(redis_server.url, lease_ttl=0.5)) for _ in range(2))
    try:
        assert await first.take("a") and await first.take("a")  # its own lease: renewed
        assert not await second.take("a") and not await second.keep("a")
        assert await first.keep("a")
        await second.release("a")  # not its lease: nothing happens
        assert not await second.take("a")
        await asyncio.sleep(0.7)  # the first replica died: nobody renews
        assert await second.take("a")
        assert not await first.keep("a")  # it learns the job is run elsewhere now
        await second.release("a")
        assert await first.take("a")
    finally:
        await first.close()
        await second.close()


async def test_redis_away_is_a_503_that_says_where(redis_server: RedisServer) -> None:
    store = RedisJobs(_policy(redis_server.url))
    redis_server.stop()
    try:
        with pytest.raises(StoreError) as error:
            await store.create(_job("a", 1), [(None, "x")], max_total=10)
        assert error.value.status == 503
        assert f"127.0.0.1:{redis_server.port}" in error.value.message
        assert "state.redis_url" in error.value.message
        redis_server.start()
        await store.create(_job("a", 1), [(None, "x")], max_total=10)  # back: it reconnects
        assert await store.pending("a", 0, 10) == [(0, "x")]
    finally:
        await store.close()


async def test_the_password_is_never_shown() -> None:
    store = RedisJobs(_policy("redis://:secret@127.0.0.1:1/0"))
    try:
        with pytest.raises(StoreError) as error:
            await store.job("a")
        assert "secret" not in error.value.message and "127.0.0.1:1" in error.value.message
    finally:
        await store.close()
