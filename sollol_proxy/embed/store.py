"""Batch jobs, their documents and their results, in one SQLite file.

Every change is one transaction (`with connection:`), committed before the proxy answers or
moves on, in WAL mode with `synchronous=FULL`: a job is accepted only once all its documents
are on disk, and a result once stored stays stored, whatever happens to the process after.
SQLite is used from one worker thread of its own (`Store.call`), so the event loop never waits
on the disk. The file is created on the first job, not before.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

FILENAME = "batches.sqlite3"
T = TypeVar("T")

# Document states.
PENDING, DONE, FAILED = 0, 1, 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    fields BLOB NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    total INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE TABLE IF NOT EXISTS docs (
    job TEXT NOT NULL,
    idx INTEGER NOT NULL,
    client_id BLOB,
    text TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    embedding BLOB,
    error TEXT,
    PRIMARY KEY (job, idx)
) WITHOUT ROWID;
"""
_JOB_COLUMNS = "id, model, fields, status, created, started, finished, total, done, failed, error"


class StoreFull(Exception):
    def __init__(self, stored: int) -> None:
        super().__init__(stored)
        self.stored = stored  # documents the store holds


class StoreError(Exception):
    """A store failed (this one, or Redis): `status` and `message` go to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Job:
    id: str
    model: str
    fields: bytes  # the JSON of the fields every sub-batch carries (model, truncate, ...)
    status: str  # queued, running, done, failed, cancelled
    created: float
    started: float | None
    finished: float | None
    total: int
    done: int
    failed: int
    error: str | None

    @property
    def over(self) -> bool:
        return self.status in ("done", "failed", "cancelled")


@dataclass(frozen=True)
class Result:
    index: int
    client_id: bytes | None  # JSON
    embedding: bytes | None  # the vector's JSON, as the node wrote it
    error: str | None


class Store:
    """The job database, used from its own thread."""

    def __init__(self, data_dir: str) -> None:
        self.path = Path(data_dir) / FILENAME
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sollol-batches")

    def exists(self) -> bool:
        return self.path.exists()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the store's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def close(self) -> None:
        await self.call(self._close)
        self._thread.shutdown(wait=False)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            db.isolation_level = "DEFERRED"  # `with db:` is one transaction from here on
            self._db = db
        return self._db

    # -- everything below runs on the store's thread ------------------------------------------

    def create(self, job: Job, docs: Sequence[tuple[bytes | None, str]], max_total: int) -> None:
        """Store the job and its documents, or raise StoreFull if the store would then hold
        more than `max_total` documents."""
        with self.db as db:
            stored = int(db.execute("SELECT COALESCE(SUM(total), 0) FROM jobs").fetchone()[0])
            if stored + job.total > max_total:
                raise StoreFull(stored)
            db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job.id,
                    job.model,
                    job.fields,
                    job.status,
                    job.created,
                    job.started,
                    job.finished,
                    job.total,
                    job.done,
                    job.failed,
                    job.error,
                ),
            )
            db.executemany(
                "INSERT INTO docs (job, idx, client_id, text) VALUES (?,?,?,?)",
                ((job.id, index, cid, text) for index, (cid, text) in enumerate(docs)),
            )

    def job(self, job_id: str) -> Job | None:
        row = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job(*row)

    def jobs(self, limit: int) -> list[Job]:
        """The newest first."""
        rows = self.db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created DESC, id LIMIT ?", (limit,)
        ).fetchall()
        return [Job(*row) for row in rows]

    def unfinished(self) -> list[Job]:
        """Jobs to run, oldest first."""
        rows = self.db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') "
            "ORDER BY created, id"
        ).fetchall()
        return [Job(*row) for row in rows]

    def pending(self, job_id: str, after: int, limit: int) -> list[tuple[int, str]]:
        """Documents without a result, in order, from index `after` on."""
        return self.db.execute(
            "SELECT idx, text FROM docs WHERE job = ? AND idx >= ? AND state = 0 "
            "ORDER BY idx LIMIT ?",
            (job_id, after, limit),
        ).fetchall()

    def set_status(self, job_id: str, status: str, at: float, error: str | None = None) -> None:
        column = "started" if status == "running" else "finished"
        with self.db as db:
            db.execute(
                f"UPDATE jobs SET status = ?, {column} = COALESCE({column}, ?), "
                "error = COALESCE(?, error) "
                "WHERE id = ? AND status NOT IN ('done', 'failed', 'cancelled')",
                (status, at, error, job_id),
            )

    def store(
        self,
        job_id: str,
        embeddings: Sequence[tuple[int, bytes]],
        errors: Sequence[tuple[int, str]] = (),
    ) -> None:
        """Results of documents still pending (a document's first result is its only one)."""
        with self.db as db:
            done = failed = 0
            for index, vector in embeddings:
                done += db.execute(
                    "UPDATE docs SET state = 1, embedding = ? WHERE job = ? AND idx = ? "
                    "AND state = 0",
                    (vector, job_id, index),
                ).rowcount
            for index, error in errors:
                failed += db.execute(
                    "UPDATE docs SET state = 2, error = ? WHERE job = ? AND idx = ? AND state = 0",
                    (error, job_id, index),
                ).rowcount
            db.execute(
                "UPDATE jobs SET done = done + ?, failed = failed + ? WHERE id = ?",
                (done, failed, job_id),
            )

    def fail_pending(self, job_id: str, error: str, at: float) -> None:
        """The job cannot go on: every document still pending gets `error` as its result."""
        with self.db as db:
            failed = db.execute(
                "UPDATE docs SET state = 2, error = ? WHERE job = ? AND state = 0",
                (error, job_id),
            ).rowcount
            db.execute(
                "UPDATE jobs SET failed = failed + ?, status = 'failed', finished = ?, error = ? "
                "WHERE id = ?",
                (failed, at, error, job_id),
            )

    def results(self, job_id: str, offset: int, limit: int) -> list[Result]:
        """Results from index `offset` on, in order, up to the first document without one."""
        rows = self.db.execute(
            "SELECT idx, client_id, state, embedding, error FROM docs "
            "WHERE job = ? AND idx >= ? ORDER BY idx LIMIT ?",
            (job_id, offset, limit),
        ).fetchall()
        out = []
        for index, client_id, state, embedding, error in rows:
            if state == PENDING:
                break
            out.append(Result(index, client_id, embedding, error))
        return out

    def errors(self, job_id: str, limit: int) -> list[tuple[str, int]]:
        """The distinct errors of the job's failed documents, most frequent first."""
        return self.db.execute(
            "SELECT error, COUNT(*) AS n FROM docs WHERE job = ? AND state = 2 "
            "GROUP BY error ORDER BY n DESC LIMIT ?",
            (job_id, limit),
        ).fetchall()

    def delete(self, job_id: str) -> None:
        with self.db as db:
            db.execute("DELETE FROM docs WHERE job = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def expire(self, finished_before: float) -> list[str]:
        """Delete the jobs that finished before `finished_before`; their ids."""
        ids = [
            row[0]
            for row in self.db.execute(
                "SELECT id FROM jobs WHERE finished IS NOT NULL AND finished < ? "
                "AND status IN ('done', 'failed', 'cancelled')",
                (finished_before,),
            )
        ]
        for job_id in ids:
            self.delete(job_id)
        return ids
