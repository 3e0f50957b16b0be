"""Batch embedding jobs: accepted at once, stored (jobstore.py), embedded in the background at
the `batch` priority, resumed after a restart.

A replica runs one job at a time, the oldest unfinished one it may take; a job runs one worker
per place its model has in the fleet (see jobrun.py for what a worker does). With the jobs in
Redis, replicas take jobs under a lease, so several jobs run at once on several replicas, and a
job whose replica died is taken up by another once its lease lapses. Finished jobs are deleted
`batch.retention` after they finish, or by `DELETE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sollol_proxy.config import Config
from sollol_proxy.embed.crew import run_crew
from sollol_proxy.embed.jobrun import JobRun
from sollol_proxy.embed.jobstore import open_store
from sollol_proxy.embed.store import Job, StoreError, StoreFull
from sollol_proxy.embed.subcall import SubCalls
from sollol_proxy.fleet.capacity import model_room
from sollol_proxy.wire import gojson
from sollol_proxy.wire.names import normalize_model

log = logging.getLogger("sollol.batch")

EXPIRY_EVERY_S = 60.0
SHARED_POLL_S = 1.0  # how often a replica looks for shared jobs to take (and renews its lease)
OPEN_READ = 1000  # unfinished jobs read at a time, oldest first
RECENT_READ = 10  # shared jobs: the latest ones read with them, for the dashboard
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
        self.store = open_store(config)
        self.jobs: dict[str, Job] = {}  # unfinished and recent jobs, as last known
        self._cancelled: set[str] = set()  # jobs cancelled before their run began
        self._wake = asyncio.Event()
        self._run: JobRun | None = None
        self.done = 0  # documents embedded since start
        self.failed = 0  # documents that got an error since start
        self._store_down = False  # logged once per outage
        # A shared job's lease is renewed well within its expiry.
        self._renew_every = min(SHARED_POLL_S, config.state.lease_ttl / 3)

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
            await self.store.create(job, docs, policy.max_docs_total)
        except StoreError as exc:
            log.error("batch job not accepted: %s", exc.message)
            raise Refused(exc.status, exc.message) from None
        except StoreFull as full:
            raise Refused(
                429,
                f"the proxy holds {full.stored} batch documents and at most "
                f"{policy.max_docs_total} (batch.max_docs_total); wait for jobs to finish "
                "and delete them, or retry later",
            ) from None
        self._remember(job)
        self._wake.set()
        log.info("batch job %s accepted: %d documents for %s", job.id, job.total, model)
        return job

    async def job(self, job_id: str) -> Job | None:
        if self._run is not None and self._run.job.id == job_id:
            return self._run.job
        return await self.store.job(job_id)

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
            await self.store.delete(job_id)
            self.jobs.pop(job_id, None)
            return job
        run = self._run
        if run is not None and run.job.id == job_id:
            run.stop()
        else:
            self._cancelled.add(job_id)
        await self.store.set_status(job_id, "cancelled", time.time())
        cancelled = replace(job, status="cancelled", finished=time.time())
        self._remember(cancelled)
        return cancelled

    def queued_documents(self) -> int:
        return sum(j.total - j.done - j.failed for j in self.jobs.values() if not j.over)

    # -- the background worker ------------------------------------------------------------------

    async def run(self) -> None:
        """Run jobs as they come, oldest first, taking up the unfinished ones; expire old ones."""
        try:
            # Not 0.0: the monotonic clock starts near zero on a machine just booted, which
            # would skip the pass at the start.
            expired_at = -math.inf
            while True:
                try:
                    if time.monotonic() - expired_at > EXPIRY_EVERY_S:
                        expired_at = time.monotonic()
                        await self._expire()
                    self._wake.clear()  # before looking: a job submitted meanwhile wakes us
                    job = await self._next()
                    self._store_back()
                    if job is None:
                        await self._idle()
                        continue
                    try:
                        await self._process(job)
                    finally:
                        await self._release(job.id)
                except StoreError as exc:
                    self._store_failed(exc)
                    await asyncio.sleep(self.store.retry_after)
        finally:
            await self.store.close()

    async def _idle(self) -> None:
        """Until a job is submitted here, or (shared jobs) it is time to look again."""
        wait = SHARED_POLL_S if self.store.shared else EXPIRY_EVERY_S
        try:
            async with asyncio.timeout(wait):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _next(self) -> Job | None:
        """The oldest unfinished job this replica may run now (it takes its lease)."""
        open_jobs = await self.store.unfinished(OPEN_READ)
        await self._refresh(open_jobs)
        self._cancelled &= {j.id for j in open_jobs}  # the others are stored as cancelled
        for job in open_jobs:
            if job.id in self._cancelled or not await self.store.take(job.id):
                continue
            if job.status == "running":
                log.info(
                    "batch job %s resumes: %d of %d documents left",
                    job.id,
                    job.total - job.done - job.failed,
                    job.total,
                )
            return job
        return None

    async def _refresh(self, open_jobs: list[Job]) -> None:
        """What the dashboard shows: the unfinished jobs as stored (other replicas change them
        too), the latest ones, and the end of those that are no longer unfinished."""
        for job in open_jobs:
            self._remember(job)
        if self.store.shared:  # and the latest, which other replicas may have run from start to end
            for job in await self.store.jobs(RECENT_READ):
                self._remember(job)
        seen = {j.id for j in open_jobs}
        for job in [j for j in self.jobs.values() if not j.over and j.id not in seen]:
            now = await self.store.job(job.id)
            if now is None:
                self.jobs.pop(job.id, None)
            else:
                self._remember(now)

    async def _release(self, job_id: str) -> None:
        with contextlib.suppress(StoreError):  # else the lease lapses by itself
            await self.store.release(job_id)

    def _store_failed(self, exc: StoreError) -> None:
        if not self._store_down:
            self._store_down = True
            log.error(
                "batch jobs wait for their store (trying again every %gs): %s",
                self.store.retry_after,
                exc.message,
            )

    def _store_back(self) -> None:
        if self._store_down:
            self._store_down = False
            log.info("batch jobs go on: %s answers again", self.store.where)

    async def _expire(self) -> None:
        before = time.time() - self.policy.retention
        for job_id in await self.store.expire(before):
            self.jobs.pop(job_id, None)
            log.info("batch job %s expired (finished over %gs ago)", job_id, self.policy.retention)

    def _remember(self, job: Job) -> None:
        self.jobs[job.id] = job
        finished = sorted((j for j in self.jobs.values() if j.over), key=lambda j: j.created)
        for old in finished[: max(0, len(finished) - KEPT_IN_MEMORY)]:
            del self.jobs[old.id]

    async def _process(self, job: Job) -> None:
        now = time.time()
        await self.store.set_status(job.id, "running", now)
        if job.id in self._cancelled:  # cancelled while that was written
            return
        running = replace(job, status="running", started=job.started or now)
        run = JobRun(running, self.calls, self.store, self.policy, self._counted)
        self._run = run
        self._remember(running)
        model = normalize_model(job.model)
        room = sum(model_room(n, model) for n in self.calls.fleet.with_model(model))
        try:
            if run.left and self.store.shared:  # worker 0 keeps the lease
                await run_crew(
                    lambda k: run.work() if k else self._keep(run), 1 + max(1, room), run.finished
                )
            elif run.left:
                await run_crew(lambda _: run.work(), max(1, room), run.finished)
        finally:
            self._run = None
        await self._finish(run)

    async def _keep(self, run: JobRun) -> None:
        """While the job runs: renew its lease, and stop when another replica holds it or the
        job was cancelled (on any replica)."""
        job_id = run.job.id
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                held = await self.store.keep(job_id)
                stored = await self.store.job(job_id)
            except StoreError:
                continue  # the workers' next write fails too, and the run stops there
            if not held or stored is None or stored.status == "cancelled":
                log.info(
                    "batch job %s stops here: %s",
                    job_id,
                    "cancelled" if held else "taken up elsewhere",
                )
                run.stop()
                return

    def _counted(self, job: Job, done: int, failed: int) -> None:
        self.done += done
        self.failed += failed
        self._remember(job)

    async def _finish(self, run: JobRun) -> None:
        job, now = run.job, time.time()
        if run.cancelled:
            return  # cancel() stored it, or another replica runs it now
        if run.fatal is not None:
            await self.store.fail_pending(job.id, run.fatal, now)
            self.failed += run.left
            final = replace(
                job, status="failed", finished=now, error=run.fatal, failed=job.failed + run.left
            )
            log.warning("batch job %s failed: %s", job.id, run.fatal)
        else:
            await self.store.set_status(job.id, "done", now)
            final = replace(job, status="done", finished=now)
            log.info("batch job %s done: %d embedded, %d failed", job.id, job.done, job.failed)
        self._remember(final)
