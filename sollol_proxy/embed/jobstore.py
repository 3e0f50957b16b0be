"""Where batch jobs live, behind one interface the job runner and the HTTP API use.

`SqliteJobs` (the default, `state.backend: local`) keeps them in the replica's own file, used by
one process at a time. `RedisJobs` (`state.backend: redis`, redis_jobs.py) keeps them in Redis,
shared by every replica: any replica takes up a job whose runner stopped renewing its lease.
Both raise `StoreError` with the status and message the client gets when the store fails.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from sollol_proxy.config import Config
from sollol_proxy.embed.redis_jobs import RedisJobs
from sollol_proxy.embed.store import Job, Result, Store, StoreError

T = TypeVar("T")

DISK_PAUSE_S = 30.0  # after the disk failed (full, say), before the runner tries again


class JobStore(Protocol):
    shared: bool  # replicas share it: jobs are taken under a lease
    retry_after: float  # seconds the runner waits after a StoreError
    where: str  # for messages: the file, or the Redis URL without its password

    async def create(
        self, job: Job, docs: Sequence[tuple[bytes | None, str]], max_total: int
    ) -> None:
        """Store the job and its documents, or raise StoreFull (nothing stored)."""

    async def job(self, job_id: str) -> Job | None: ...
    async def jobs(self, limit: int) -> list[Job]: ...
    async def unfinished(self, limit: int) -> list[Job]: ...
    async def pending(self, job_id: str, after: int, limit: int) -> list[tuple[int, str]]: ...

    async def set_status(
        self, job_id: str, status: str, at: float, error: str | None = None
    ) -> None:
        """A job that is over stays over (a cancel wins over a run that ends at that moment)."""

    async def store(
        self,
        job_id: str,
        embeddings: Sequence[tuple[int, bytes]],
        errors: Sequence[tuple[int, str]] = (),
    ) -> None:
        """Results of documents still pending (a document's first result is its only one)."""

    async def fail_pending(self, job_id: str, error: str, at: float) -> None: ...
    async def results(self, job_id: str, offset: int, limit: int) -> list[Result]: ...
    async def errors(self, job_id: str, limit: int) -> list[tuple[str, int]]: ...
    async def delete(self, job_id: str) -> None: ...
    async def expire(self, finished_before: float) -> list[str]: ...

    async def take(self, job_id: str) -> bool:
        """Whether this replica may run the job now (it holds, or now took, its lease)."""

    async def keep(self, job_id: str) -> bool:
        """Renew the lease while the job runs; False: another replica holds it now."""

    async def release(self, job_id: str) -> None: ...
    async def close(self) -> None: ...


class SqliteJobs:
    """The replica's own SQLite file (store.py), on its own thread; nothing to lease."""

    shared = False
    retry_after = DISK_PAUSE_S

    def __init__(self, data_dir: str) -> None:
        self.db = Store(data_dir)
        self.where = str(self.db.path)

    @property
    def path(self) -> Path:
        return self.db.path

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await self.db.call(fn, *args)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                500, f"sollol-proxy cannot store batch jobs in {self.db.path}: {exc}"
            ) from exc

    async def create(
        self, job: Job, docs: Sequence[tuple[bytes | None, str]], max_total: int
    ) -> None:
        await self._call(self.db.create, job, docs, max_total)

    async def job(self, job_id: str) -> Job | None:
        return await self._call(self.db.job, job_id) if self.db.exists() else None

    async def jobs(self, limit: int) -> list[Job]:
        return await self._call(self.db.jobs, limit) if self.db.exists() else []

    async def unfinished(self, limit: int) -> list[Job]:
        return (await self._call(self.db.unfinished))[:limit] if self.db.exists() else []

    async def pending(self, job_id: str, after: int, limit: int) -> list[tuple[int, str]]:
        return await self._call(self.db.pending, job_id, after, limit)

    async def set_status(
        self, job_id: str, status: str, at: float, error: str | None = None
    ) -> None:
        await self._call(self.db.set_status, job_id, status, at, error)

    async def store(
        self,
        job_id: str,
        embeddings: Sequence[tuple[int, bytes]],
        errors: Sequence[tuple[int, str]] = (),
    ) -> None:
        await self._call(self.db.store, job_id, embeddings, errors)

    async def fail_pending(self, job_id: str, error: str, at: float) -> None:
        await self._call(self.db.fail_pending, job_id, error, at)

    async def results(self, job_id: str, offset: int, limit: int) -> list[Result]:
        return await self._call(self.db.results, job_id, offset, limit)

    async def errors(self, job_id: str, limit: int) -> list[tuple[str, int]]:
        return await self._call(self.db.errors, job_id, limit)

    async def delete(self, job_id: str) -> None:
        await self._call(self.db.delete, job_id)

    async def expire(self, finished_before: float) -> list[str]:
        return await self._call(self.db.expire, finished_before) if self.db.exists() else []

    async def take(self, job_id: str) -> bool:
        return True

    async def keep(self, job_id: str) -> bool:
        return True

    async def release(self, job_id: str) -> None:
        return None

    async def close(self) -> None:
        await self.db.close()


def open_store(config: Config) -> JobStore:
    """The store `state.backend` asks for (opened lazily: nothing is touched before the first
    job, and an unreachable Redis fails requests to the batch API, never the start-up)."""
    if config.state.backend == "redis":
        return RedisJobs(config.state)
    return SqliteJobs(config.batch.data_dir)
