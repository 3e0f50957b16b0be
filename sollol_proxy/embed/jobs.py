"""Batch embedding jobs: accepted at once, stored on disk, embedded in the background at the
`batch` priority, resumed after a restart.

Jobs run one after the other, oldest first; a job runs one worker per place its model has in
the fleet (see jobrun.py for what a worker does). Finished jobs are deleted `batch.retention`
after they finish, or by `DELETE`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sollol_proxy.config import Config
from sollol_proxy.embed.crew import run_crew
from sollol_proxy.embed.jobrun import JobRun
from sollol_proxy.embed.store import Job, Store, StoreFull
from sollol_proxy.embed.subcall import SubCalls
from sollol_proxy.fleet.capacity import model_room
from sollol_proxy.wire import gojson
from sollol_proxy.wire.names import normalize_model

log = logging.getLogger("sollol.batch")

EXPIRY_EVERY_S = 60.0
STORE_PAUSE_S = 30.0  # after the store failed (disk full, say), before the job is taken up again
KEPT_IN_MEMORY = 100  # finished jobs kept in memory for the dashboard (unfinished: all)


class Refused(Exception):
    """A job the proxy will not accept: the status and message go to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class JobRunner:
    def __init__(self, calls: SubCalls, config: Config) -> None:
        self.calls = calls
        self.policy = config.batch
        self.store = Store(self.policy.data_dir)
        self.jobs: dict[str, Job] = {}  # unfinished and recent jobs, as last known
        self._queue: deque[str] = deque()  # jobs to run, the running one first
        self._cancelled: set[str] = set()  # jobs cancelled before their run began
        self._wake = asyncio.Event()
        self._run: JobRun | None = None
        self.done = 0  # documents embedded since start
        self.failed = 0  # documents that got an error since start

    def reconfigure(self, config: Config) -> None:
        """Bounds and sizes apply from now on (`batch.data_dir` needs a restart: a reload
        keeps the running one)."""
        self.policy = config.batch

    # -- what the HTTP API asks ----------------------------------------------------------------

    async def submit(
        self, model: str, fields: dict[str, Any], docs: Sequence[tuple[bytes | None, str]]
    ) -> Job:
        policy = self.policy
        if len(docs) > policy.max_docs_per_job:
            raise Refused(
                413,
                f"a batch job holds at most {policy.max_docs_per_job} documents "
                f"(batch.max_docs_per_job), got {len(docs)}",
            )
        job = Job(
            id=secrets.token_hex(8),
            model=model,
            fields=gojson.dumps(fields),
            status="queued",
            created=time.time(),
            started=None,
            finished=None,
            total=len(docs),
            done=0,
            failed=0,
            error=None,
        )
        try:
            await self.store.call(self.store.create, job, docs, policy.max_docs_total)
        except (OSError, sqlite3.Error) as exc:
            log.error("cannot store batch job in %s: %s", self.store.path, exc)
            raise Refused(
                500, f"sollol-proxy cannot store batch jobs in {self.store.path}: {exc}"
            ) from None
        except StoreFull as full:
            raise Refused(
                429,
                f"the proxy holds {full.stored} batch documents and at most "
                f"{policy.max_docs_total} (batch.max_docs_total); wait for jobs to finish "
                "and delete them, or retry later",
            ) from None
        self._remember(job)
        self._queue.append(job.id)
        self._wake.set()
        log.info("batch job %s accepted: %d documents for %s", job.id, job.total, model)
        return job

    async def job(self, job_id: str) -> Job | None:
        if self._run is not None and self._run.job.id == job_id:
            return self._run.job
        if not self.store.exists():
            return None
        return await self.store.call(self.store.job, job_id)

    def note(self, job_id: str) -> str | None:
        """Why the running job waits, if it does."""
        run = self._run
        return run.note if run is not None and run.job.id == job_id else None

    def rate(self, job: Job) -> float | None:
        """Documents per second of a job (of this run, for a running job)."""
        run = self._run
        if run is not None and run.job.id == job.id:
            return run.rate()
        if job.started and job.finished and job.finished > job.started:
            return job.done / (job.finished - job.started)
        return None

    async def cancel(self, job_id: str) -> Job | None:
        """Stop a queued or running job (its results so far stay); delete one that is over."""
        job = await self.job(job_id)
        if job is None:
            return None
        if job.over:
            await self.store.call(self.store.delete, job_id)
            self.jobs.pop(job_id, None)
            return job
        run = self._run
        if run is not None and run.job.id == job_id:
            run.stop()
        else:
            self._cancelled.add(job_id)
        await self.store.call(self.store.set_status, job_id, "cancelled", time.time())
        cancelled = replace(job, status="cancelled", finished=time.time())
        self._remember(cancelled)
        return cancelled

    def queued_documents(self) -> int:
        return sum(j.total - j.done - j.failed for j in self.jobs.values() if not j.over)

    # -- the background worker ------------------------------------------------------------------

    async def run(self) -> None:
        """Resume the unfinished jobs, then run jobs as they come; expire old ones."""
        try:
            if self.store.exists():
                for job in await self.store.call(self.store.unfinished):
                    self._remember(job)
                    self._queue.append(job.id)
                    log.info(
                        "batch job %s resumes: %d of %d documents left",
                        job.id,
                        job.total - job.done - job.failed,
                        job.total,
                    )
            expired_at = 0.0
            while True:
                if time.monotonic() - expired_at > EXPIRY_EVERY_S:
                    expired_at = time.monotonic()
                    await self._expire()
                if not self._queue:
                    self._wake.clear()
                    try:
                        async with asyncio.timeout(EXPIRY_EVERY_S):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                    continue
                job_id = self._queue[0]
                try:
                    job = await self.store.call(self.store.job, job_id)
                    if job is not None and not job.over and job_id not in self._cancelled:
                        await self._process(job)
                except (OSError, sqlite3.Error):  # the disk: full, gone, read-only
                    log.exception(
                        "batch job %s stopped; trying again in %gs", job_id, STORE_PAUSE_S
                    )
                    await asyncio.sleep(STORE_PAUSE_S)
                    continue
                self._queue.popleft()
                self._cancelled.discard(job_id)
        finally:
            await self.store.close()

    async def _expire(self) -> None:
        if not self.store.exists():
            return
        before = time.time() - self.policy.retention
        for job_id in await self.store.call(self.store.expire, before):
            self.jobs.pop(job_id, None)
            log.info("batch job %s expired (finished over %gs ago)", job_id, self.policy.retention)

    def _remember(self, job: Job) -> None:
        self.jobs[job.id] = job
        finished = sorted((j for j in self.jobs.values() if j.over), key=lambda j: j.created)
        for old in finished[: max(0, len(finished) - KEPT_IN_MEMORY)]:
            del self.jobs[old.id]

    async def _process(self, job: Job) -> None:
        now = time.time()
        await self.store.call(self.store.set_status, job.id, "running", now)
        if job.id in self._cancelled:  # cancelled while that was written
            return
        running = replace(job, status="running", started=job.started or now)
        run = JobRun(running, self.calls, self.store, self.policy, self._counted)
        self._run = run
        self._remember(running)
        model = normalize_model(job.model)
        room = sum(model_room(n, model) for n in self.calls.fleet.with_model(model))
        try:
            if run.left:
                await run_crew(lambda _: run.work(), max(1, room), run.finished)
        finally:
            self._run = None
        await self._finish(run)

    def _counted(self, job: Job, done: int, failed: int) -> None:
        self.done += done
        self.failed += failed
        self._remember(job)

    async def _finish(self, run: JobRun) -> None:
        job, now = run.job, time.time()
        if run.cancelled:
            return  # cancel() stored it
        if run.fatal is not None:
            await self.store.call(self.store.fail_pending, job.id, run.fatal, now)
            self.failed += run.left
            final = replace(
                job, status="failed", finished=now, error=run.fatal, failed=job.failed + run.left
            )
            log.warning("batch job %s failed: %s", job.id, run.fatal)
        else:
            await self.store.call(self.store.set_status, job.id, "done", now)
            final = replace(job, status="done", finished=now)
            log.info("batch job %s done: %d embedded, %d failed", job.id, job.done, job.failed)
        self._remember(final)
