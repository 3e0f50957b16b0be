"""One batch job being embedded: its workers, what each sends next, and what becomes of it.

Each worker waits in the admission queue at priority 1 (so interactive requests go first),
takes the next pending documents (between `batch.min_batch` and `batch.max_batch`, about
`TARGET_S` of the node's work, fewer near the end) and stores their vectors in one transaction.
A document gets one result, its vector or its error:

- the nodes failed the sub-batch (after the forwarder's own retries): it is tried again later,
  `MAX_TRIES` times in all, then its documents get that error;
- a node refused it with a `4xx`: a document is at fault, so the sub-batch is halved until the
  document is alone, and gets Ollama's error (`404` model not found ends the whole job instead);
- no slot within the queue's wait, or the model's nodes are down: wait and go on.

The run ends when every document has its result. A document that was on its way to a node when
the process died has no result yet, so it is sent again after the restart.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from sollol_proxy.admission.priority import NAMED
from sollol_proxy.admission.tickets import QueueRejected
from sollol_proxy.config.policies import BatchPolicy
from sollol_proxy.embed.inputs import API_EMBED, EmbedCall
from sollol_proxy.embed.jobstore import JobStore
from sollol_proxy.embed.split import job_batch_size
from sollol_proxy.embed.store import Job
from sollol_proxy.embed.subcall import Done, SubCalls, for_job
from sollol_proxy.fleet.plan import NoTarget
from sollol_proxy.wire.names import normalize_model

BATCH_PRIORITY = NAMED["batch"]
TARGET_S = 2.0  # a sub-batch is about this much of its node's work
PAGE = 4096  # pending documents read from disk at a time
MAX_TRIES = 3  # a sub-batch the nodes failed this many times: its documents fail
PAUSE_S = 1.0  # before a sub-batch is sent again, or a slot asked for again


@dataclass(eq=False)
class Piece:
    docs: list[tuple[int, str]]  # (index, text)
    tries: int = 0


@dataclass(eq=False)
class JobRun:
    """The job being embedded, and its workers' shared state."""

    job: Job
    calls: SubCalls
    store: JobStore
    policy: BatchPolicy
    counted: Callable[[Job, int, int], None]  # (job as now, newly done, newly failed)
    left: int = 0  # documents without a result
    call: EmbedCall = field(init=False)
    buffer: deque[tuple[int, str]] = field(default_factory=deque)
    again: deque[Piece] = field(default_factory=deque)  # pieces to send before the buffer
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
    done_here: int = 0  # documents embedded since this run started (for its rate)
    numbers: int = 0

    def __post_init__(self) -> None:
        fields = orjson.loads(self.job.fields)
        self.call = EmbedCall(API_EMBED, self.job.model, (), {**fields, "input": []}, b"")
        self.left = self.job.total - self.job.done - self.job.failed

    def rate(self) -> float | None:
        elapsed = time.monotonic() - self.started
        return self.done_here / elapsed if elapsed > 0 and self.done_here else None

    def stop(self) -> None:
        self.cancelled = True
        self.finished.set()

    def _has_work(self) -> bool:
        return bool(self.again or self.buffer)

    async def work(self) -> None:
        """One worker: until every document has its result (or the job stops)."""
        while not (self.cancelled or self.fatal or self.left == 0):
            await self._read()
            if not self._has_work():
                if self.on_the_way == 0 and self.read_all:
                    break  # nothing left to send and nothing that may come back
                self.settled.clear()
                await self.settled.wait()
                continue
            self.numbers += 1
            try:
                done = await self.calls.run(
                    for_job(API_EMBED),
                    self.call,
                    BATCH_PRIORITY,
                    f"{self.job.id}.{self.numbers}",
                    self._take,
                )
            except (QueueRejected, NoTarget) as exc:
                self.note = exc.message
                await asyncio.sleep(PAUSE_S)
                continue
            if done is not None:
                await self._settle(done)
        self.finished.set()

    async def _read(self) -> None:
        """Keep the next pending documents in memory."""
        async with self.reading:
            if self.read_all or len(self.buffer) >= self.policy.max_batch * 4:
                return
            page = await self.store.pending(self.job.id, self.next_index, PAGE)
            self.buffer.extend(page)
            if page:
                self.next_index = page[-1][0] + 1
            self.read_all = len(page) < PAGE

    def _take(self, node: str) -> tuple[Piece, list[str]] | None:
        if self.cancelled or self.fatal:
            return None
        if self.again:
            piece = self.again.popleft()
        elif self.buffer:
            model = normalize_model(self.job.model)
            holders = [n.name for n in self.calls.fleet.with_model(model)]
            speed = self.calls.speed
            size = job_batch_size(
                speed.rate(node, model),
                sum(speed.rate(n, model) for n in holders),
                self.left,
                self.policy.min_batch,
                self.policy.max_batch,
                TARGET_S,
            )
            count = min(size, len(self.buffer))
            piece = Piece([self.buffer.popleft() for _ in range(count)])
        else:
            return None
        self.on_the_way += len(piece.docs)
        return piece, [text for _, text in piece.docs]

    async def _settle(self, done: Done[Piece]) -> None:
        piece = done.piece
        try:
            if done.answer is not None:
                results = [
                    (i, v) for (i, _), v in zip(piece.docs, done.answer.vectors, strict=True)
                ]
                await self.store.store(self.job.id, results)
                self._count(done=len(results))
                self.note = None
                return
            status, message = done.response.status, error_message(done.response.body)
            if status == 404:
                self.fatal = message
                self.finished.set()
            elif 400 <= status < 500 and len(piece.docs) > 1:
                half = len(piece.docs) // 2
                self.again.extendleft([Piece(piece.docs[half:]), Piece(piece.docs[:half])])
            elif 400 <= status < 500 or piece.tries + 1 >= MAX_TRIES:
                errors = [(i, message) for i, _ in piece.docs]
                await self.store.store(self.job.id, [], errors)
                self._count(failed=len(errors))
            else:
                self.note = f"sub-batch failed ({status}: {message}); trying again"
                await asyncio.sleep(PAUSE_S * (piece.tries + 1))
                self.again.append(Piece(piece.docs, piece.tries + 1))
        finally:
            self.on_the_way -= len(piece.docs)
            self.settled.set()

    def _count(self, done: int = 0, failed: int = 0) -> None:
        self.left -= done + failed
        self.done_here += done
        self.job = replace(self.job, done=self.job.done + done, failed=self.job.failed + failed)
        self.counted(self.job, done, failed)
        if self.left == 0:
            self.finished.set()


def error_message(body: Any) -> str:
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
