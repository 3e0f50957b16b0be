"""Batch embedding jobs: accepted at once, stored on disk, embedded in the background at the
`batch` priority, resumed after a restart.

Jobs run one after the other, oldest first. A job runs one worker per slot its model has in
the fleet; each waits in the admission queue at priority 1 (so interactive requests go first),
takes the next pending documents (between `batch.min_batch` and `batch.max_batch`, about
`TARGET_S` of the node's work, fewer near the end) and stores their vectors in one transaction.
A document has one result, its vector or its error:

- the nodes failed the sub-batch (after the forwarder's own retries): it is tried again later,
  `MAX_TRIES` times in all, then its documents get that error;
- a node refused it with a `4xx`: a document is at fault, so the sub-batch is halved until the
  document is alone, and gets Ollama's error (`404` model not found ends the whole job instead);
- no slot within the queue's wait, or the model's nodes are down: wait and go on.

Workers stop when every document has its result. A document that was on its way to a node when
the process died has no result yet, so it is simply sent again after the restart.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from sollol_proxy.admission.priority import NAMED
from sollol_proxy.admission.tickets import QueueRejected
from sollol_proxy.config import Config
from sollol_proxy.embed.crew import run_crew
from sollol_proxy.embed.inputs import API_EMBED, EmbedCall
from sollol_proxy.embed.split import job_batch_size
from sollol_proxy.embed.store import Job, Store, StoreFull
from sollol_proxy.embed.subcall import Done, SubCalls, for_job
from sollol_proxy.fleet.capacity import model_slots
from sollol_proxy.fleet.selector import NoTarget
from sollol_proxy.wire import gojson
from sollol_proxy.wire.names import normalize_model

log = logging.getLogger("sollol.batch")

BATCH_PRIORITY = NAMED["batch"]
TARGET_S = 2.0  # a sub-batch is about this much of its node's work
PAGE = 4096  # pending documents read from disk at a time
MAX_TRIES = 3  # a sub-batch the nodes failed this many times: its documents fail
PAUSE_S = 1.0  # before a sub-batch is sent again, or a slot asked for again
EXPIRY_EVERY_S = 60.0
KEPT_IN_MEMORY = 100  # recent jobs summarised for the dashboard and /metrics


class Refused(Exception):
    """A job the proxy will not accept: the status and message go to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(eq=False)
class _Piece:
    docs: list[tuple[int, str]]
    tries: int = 0


@dataclass(eq=False)
class _Run:
    """The job being embedded."""

    job: Job
    call: EmbedCall
    left: int  # documents without a result
    buffer: deque[tuple[int, str]] = field(default_factory=deque)
    again: deque[_Piece] = field(default_factory=deque)  # pieces to send before the buffer
    next_index: int = 0  # where the next page of pending documents starts
    read_all: bool = False
    on_the_way: int = 0  # documents sent and not settled
    cancelled: bool = False
    fatal: str | None = None  # the error that ends the job
    note: str | None = None  # why it waits, for the status endpoint
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    reading: asyncio.Lock = field(default_factory=asyncio.Lock)
    started: float = field(default_factory=time.monotonic)
    done_here: int = 0  # documents embedded since the run started (for its rate)

    def has_work(self) -> bool:
        return bool(self.again or self.buffer)


class JobRunner:
    def __init__(self, calls: SubCalls, config: Config) -> None:
        self.calls = calls
        self.policy = config.batch
        self.store = Store(self.policy.data_dir)
        self.jobs: dict[str, Job] = {}  # recent and unfinished jobs, as last known
        self._queue: deque[str] = deque()
        self._wake = asyncio.Event()
        self._run: _Run | None = None
        self._numbers = 0
        self.done = 0  # documents embedded since start
        self.failed = 0  # documents that got an error since start

    def reconfigure(self, config: Config) -> None:
        """Bounds and sizes apply from now on; `batch.data_dir` needs a restart."""
        self.policy = replace(config.batch, data_dir=self.policy.data_dir)

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
            elapsed = time.monotonic() - run.started
            return run.done_here / elapsed if elapsed > 0 and run.done_here else None
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
            run.cancelled = True
            run.finished.set()
        elif job_id in self._queue:
            self._queue.remove(job_id)
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
                job = await self.store.call(self.store.job, self._queue.popleft())
                if job is not None and not job.over:
                    await self._process(job)
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
        finished = [j for j in self.jobs.values() if j.over]
        for old in sorted(finished, key=lambda j: j.created)[: len(self.jobs) - KEPT_IN_MEMORY]:
            del self.jobs[old.id]

    async def _process(self, job: Job) -> None:
        fields = orjson.loads(job.fields)
        payload = {**fields, "input": []}
        call = EmbedCall(API_EMBED, job.model, (), payload, b"")
        run = _Run(job, call, left=job.total - job.done - job.failed)
        self._run = run
        now = time.time()
        await self.store.call(self.store.set_status, job.id, "running", now)
        run.job = replace(job, status="running", started=job.started or now)
        self._remember(run.job)
        model = normalize_model(job.model)
        slots = sum(model_slots(n, model) for n in self.calls.fleet.with_model(model))
        try:
            if run.left:
                await run_crew(lambda _: self._work(run), max(1, slots), run.finished)
        finally:
            self._run = None
        await self._finish(run)

    async def _finish(self, run: _Run) -> None:
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

    async def _work(self, run: _Run) -> None:
        while not (run.cancelled or run.fatal or run.left == 0):
            await self._read(run)
            if not run.has_work():
                if run.on_the_way == 0 and run.read_all:
                    break  # nothing left to send and nothing that may come back
                run.settled.clear()
                await run.settled.wait()
                continue
            self._numbers += 1
            try:
                done = await self.calls.run(
                    for_job(API_EMBED),
                    run.call,
                    BATCH_PRIORITY,
                    f"{run.job.id}.{self._numbers}",
                    lambda node: self._take(run, node),
                )
            except (QueueRejected, NoTarget) as exc:
                run.note = exc.message
                await asyncio.sleep(PAUSE_S)
                continue
            if done is not None:
                await self._settle(run, done)
        run.finished.set()

    async def _read(self, run: _Run) -> None:
        """Keep the next pending documents in memory."""
        async with run.reading:
            if run.read_all or len(run.buffer) >= self.policy.max_batch * 4:
                return
            page = await self.store.call(self.store.pending, run.job.id, run.next_index, PAGE)
            run.buffer.extend(page)
            if page:
                run.next_index = page[-1][0] + 1
            run.read_all = len(page) < PAGE

    def _take(self, run: _Run, node: str) -> tuple[_Piece, list[str]] | None:
        if run.cancelled or run.fatal:
            return None
        if run.again:
            piece = run.again.popleft()
        elif run.buffer:
            model = normalize_model(run.job.model)
            holders = [n.name for n in self.calls.fleet.with_model(model)]
            speed = self.calls.speed
            size = job_batch_size(
                speed.rate(node, model),
                sum(speed.rate(n, model) for n in holders),
                run.left,
                self.policy.min_batch,
                self.policy.max_batch,
                TARGET_S,
            )
            piece = _Piece([run.buffer.popleft() for _ in range(min(size, len(run.buffer)))])
        else:
            return None
        run.on_the_way += len(piece.docs)
        return piece, [text for _, text in piece.docs]

    async def _settle(self, run: _Run, done: Done[_Piece]) -> None:
        piece = done.piece
        try:
            if done.answer is not None:
                results = [
                    (i, v) for (i, _), v in zip(piece.docs, done.answer.vectors, strict=True)
                ]
                await self.store.call(self.store.store, run.job.id, results)
                self._count(run, done=len(results))
                run.note = None
                return
            status, message = done.response.status, _message(done.response.body)
            if status == 404:
                run.fatal = message
                run.finished.set()
            elif 400 <= status < 500 and len(piece.docs) > 1:
                half = len(piece.docs) // 2
                run.again.extendleft([_Piece(piece.docs[half:]), _Piece(piece.docs[:half])])
            elif 400 <= status < 500 or piece.tries + 1 >= MAX_TRIES:
                errors = [(i, message) for i, _ in piece.docs]
                await self.store.call(self.store.store, run.job.id, [], errors)
                self._count(run, failed=len(errors))
            else:
                run.note = f"sub-batch failed ({status}: {message}); trying again"
                await asyncio.sleep(PAUSE_S * (piece.tries + 1))
                run.again.append(_Piece(piece.docs, piece.tries + 1))
        finally:
            run.on_the_way -= len(piece.docs)
            run.settled.set()

    def _count(self, run: _Run, done: int = 0, failed: int = 0) -> None:
        run.left -= done + failed
        run.done_here += done
        self.done += done
        self.failed += failed
        run.job = replace(run.job, done=run.job.done + done, failed=run.job.failed + failed)
        self._remember(run.job)
        if run.left == 0:
            run.finished.set()


def _message(body: Any) -> str:
    """The error message of a node's (or the proxy's) error answer."""
    raw = body if isinstance(body, bytes) else b""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:500].decode("utf-8", "replace")
    error = value.get("error") if isinstance(value, dict) else None
    if isinstance(error, dict):  # the /v1 envelope
        error = error.get("message")
    return str(error)[:500] if error is not None else raw[:500].decode("utf-8", "replace")
