"""Batch jobs kept in Redis, shared by every replica (`state.backend: redis`).

A job is run by one replica at a time, the one holding its lease (`lease:<id>`, a token that
expires after `state.lease_ttl` unless renewed): a replica that dies stops renewing, and another
takes the job up where the stored results end, sending again only the documents without one.
The keys, under `state.key_prefix` + `batch:`:

    job:<id>      hash: model, fields, status, created, started, finished, total, done, ...
    text:<id>     list: the documents' texts, in order
    ids:<id>      hash: index -> the client's id (JSON), for documents that have one
    out:<id>      hash: index -> b"v" + the vector's JSON as the node wrote it, or b"e" + error
    settled:<id>  bitmap: bit `index` set once the document has its result
    errs:<id>     sorted set: error -> documents that got it
    all, open, over   sorted sets of job ids: by creation; unfinished by creation; by end
    stored        documents stored over all jobs (`batch.max_docs_total`)

Every change a replica makes is one script or one MULTI, so a job is seen whole or not at all,
and a document's first result is its only one whichever replica stores it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Iterator, Sequence

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sollol_proxy.config.model import redact_password
from sollol_proxy.config.policies import StatePolicy
from sollol_proxy.embed import redis_scripts as lua
from sollol_proxy.embed.store import Job, Result, StoreError, StoreFull

CONNECT_S = 1.0  # an unreachable Redis answers the client within about this
OPERATION_S = 10.0  # a job's documents go in one MULTI: far longer than state.timeout
RETRY_AFTER_S = 2.0  # the runner's pause after Redis failed
TEXTS_PER_PUSH = 10_000


def _settled(bits: bytes, start: int, index: int) -> bool:
    """Whether bit `index` is set in `bits`, the bitmap read from byte `start // 8` on (Redis
    numbers the bits of a byte from its most significant)."""
    offset = index - (start // 8) * 8
    byte = offset >> 3
    return byte < len(bits) and bool(bits[byte] & (0x80 >> (offset & 7)))


class RedisJobs:
    shared = True
    retry_after = RETRY_AFTER_S

    def __init__(self, policy: StatePolicy) -> None:
        self.where = redact_password(policy.redis_url)
        self.client = redis.Redis.from_url(
            policy.redis_url,
            socket_connect_timeout=CONNECT_S,
            socket_timeout=OPERATION_S,
            # One retry: the first command after Redis restarted finds a dead pooled connection.
            retry=Retry(NoBackoff(), 1),
        )
        self.prefix = policy.key_prefix + "batch:"
        self.lease_ms = max(1, round(policy.lease_ttl * 1000))
        # Who holds a lease, for people reading Redis: host, process, then a random part.
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._reserve = self.client.register_script(lua.RESERVE)
        self._set_status = self.client.register_script(lua.SET_STATUS)
        self._store = self.client.register_script(lua.STORE)
        self._delete = self.client.register_script(lua.DELETE)
        self._take = self.client.register_script(lua.TAKE)
        self._keep = self.client.register_script(lua.KEEP)
        self._release = self.client.register_script(lua.RELEASE)

    def _key(self, kind: str, job_id: str = "") -> str:
        return f"{self.prefix}{kind}:{job_id}" if job_id else f"{self.prefix}{kind}"

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            yield
            if task is not None and task.cancelling() > cancelling:
                # redis-py may finish the command it was cancelled in instead of raising (seen:
                # a worker withdrawn by its crew went on); the cancellation stands.
                raise asyncio.CancelledError
        except (RedisError, OSError) as exc:
            raise StoreError(
                503,
                f"batch jobs are kept in Redis at {self.where} (state.redis_url), which does "
                f"not answer ({str(exc).rstrip('.')}); try again later",
            ) from exc

    async def create(
        self, job: Job, docs: Sequence[tuple[bytes | None, str]], max_total: int
    ) -> None:
        with self._answering():
            fits, stored = await self._reserve(
                keys=[self._key("stored")], args=[job.total, max_total]
            )
            if not fits:
                raise StoreFull(int(stored))
            try:
                async with self.client.pipeline(transaction=True) as pipe:
                    texts = [text for _, text in docs]
                    for start in range(0, len(texts), TEXTS_PER_PUSH):
                        pipe.rpush(
                            self._key("text", job.id), *texts[start : start + TEXTS_PER_PUSH]
                        )
                    ids = {index: cid for index, (cid, _) in enumerate(docs) if cid is not None}
                    if ids:
                        pipe.hset(self._key("ids", job.id), mapping=ids)
                    pipe.hset(self._key("job", job.id), mapping=_fields(job))
                    pipe.zadd(self._key("all"), {job.id: job.created})
                    pipe.zadd(self._key("open"), {job.id: job.created})
                    await pipe.execute()
            except BaseException:
                with contextlib.suppress(RedisError, OSError):
                    await self.client.decrby(self._key("stored"), job.total)
                raise

    async def job(self, job_id: str) -> Job | None:
        with self._answering():
            return _job(job_id, await self.client.hgetall(self._key("job", job_id)))

    async def _jobs(self, ids: list[bytes]) -> list[Job]:
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self._key("job", job_id.decode()))
            rows = await pipe.execute()
        jobs = (_job(i.decode(), row) for i, row in zip(ids, rows, strict=True))
        return [j for j in jobs if j is not None]

    async def jobs(self, limit: int) -> list[Job]:
        with self._answering():
            return await self._jobs(await self.client.zrevrange(self._key("all"), 0, limit - 1))

    async def unfinished(self, limit: int) -> list[Job]:
        with self._answering():
            return await self._jobs(await self.client.zrange(self._key("open"), 0, limit - 1))

    async def _settled_from(self, job_id: str, start: int) -> tuple[int, bytes]:
        """The job's total and its settled bitmap from document `start` on."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hget(self._key("job", job_id), "total")
            pipe.getrange(self._key("settled", job_id), start // 8, -1)
            total, bits = await pipe.execute()
        return int(total or 0), bits

    async def pending(self, job_id: str, after: int, limit: int) -> list[tuple[int, str]]:
        with self._answering():
            total, bits = await self._settled_from(job_id, after)
            indexes = []
            for index in range(after, total):
                if not _settled(bits, after, index):
                    indexes.append(index)
                    if len(indexes) == limit:
                        break
            if not indexes:
                return []
            texts = await self.client.lrange(self._key("text", job_id), indexes[0], indexes[-1])
            return [(i, texts[i - indexes[0]].decode()) for i in indexes]

    async def set_status(
        self, job_id: str, status: str, at: float, error: str | None = None
    ) -> None:
        with self._answering():
            await self._set_status(
                keys=[self._key("job", job_id), self._key("open"), self._key("over")],
                args=[status, repr(at), error or "", job_id],
            )

    async def store(
        self,
        job_id: str,
        embeddings: Sequence[tuple[int, bytes]],
        errors: Sequence[tuple[int, str]] = (),
    ) -> None:
        args: list[int | bytes | str] = [len(embeddings)]
        for index, value in (*embeddings, *errors):
            args += [index, value]
        keys = [self._key(k, job_id) for k in ("job", "out", "settled", "errs")]
        with self._answering():
            await self._store(keys=keys, args=args)

    async def fail_pending(self, job_id: str, error: str, at: float) -> None:
        while page := await self.pending(job_id, 0, TEXTS_PER_PUSH):
            await self.store(job_id, [], [(index, error) for index, _ in page])
        await self.set_status(job_id, "failed", at, error)

    async def results(self, job_id: str, offset: int, limit: int) -> list[Result]:
        with self._answering():
            total, bits = await self._settled_from(job_id, offset)
            end = offset
            while end < min(total, offset + limit) and _settled(bits, offset, end):
                end += 1
            if end == offset:
                return []
            indexes = list(range(offset, end))
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hmget(self._key("out", job_id), indexes)
                pipe.hmget(self._key("ids", job_id), indexes)
                outs, ids = await pipe.execute()
        return [
            Result(i, cid, out[1:], None)
            if out[:1] == b"v"
            else Result(i, cid, None, out[1:].decode())
            for i, out, cid in zip(indexes, outs, ids, strict=True)
        ]

    async def errors(self, job_id: str, limit: int) -> list[tuple[str, int]]:
        with self._answering():
            rows = await self.client.zrevrange(
                self._key("errs", job_id), 0, limit - 1, withscores=True
            )
        return [(error.decode(), int(count)) for error, count in rows]

    async def delete(self, job_id: str) -> None:
        keys = [self._key("job", job_id), self._key("stored")]
        keys += [self._key(k) for k in ("all", "open", "over")]
        keys += [self._key(k, job_id) for k in ("text", "ids", "out", "settled", "errs", "lease")]
        with self._answering():
            await self._delete(keys=keys, args=[job_id])

    async def expire(self, finished_before: float) -> list[str]:
        with self._answering():
            ids = await self.client.zrangebyscore(self._key("over"), "-inf", finished_before)
        for job_id in ids:
            await self.delete(job_id.decode())
        return [i.decode() for i in ids]

    async def take(self, job_id: str) -> bool:
        with self._answering():
            return bool(
                await self._take(
                    keys=[self._key("lease", job_id)], args=[self.token, self.lease_ms]
                )
            )

    async def keep(self, job_id: str) -> bool:
        with self._answering():
            return bool(
                await self._keep(
                    keys=[self._key("lease", job_id)], args=[self.token, self.lease_ms]
                )
            )

    async def release(self, job_id: str) -> None:
        with self._answering():
            await self._release(keys=[self._key("lease", job_id)], args=[self.token])

    async def close(self) -> None:
        await self.client.aclose()


def _fields(job: Job) -> dict[str, bytes | str | int | float]:
    fields: dict[str, bytes | str | int | float] = {
        "model": job.model,
        "fields": job.fields,
        "status": job.status,
        "created": repr(job.created),
        "total": job.total,
        "done": job.done,
        "failed": job.failed,
    }
    for name in ("started", "finished"):
        value = getattr(job, name)
        if value is not None:
            fields[name] = repr(value)
    if job.error is not None:
        fields["error"] = job.error
    return fields


def _job(job_id: str, row: dict[bytes, bytes]) -> Job | None:
    if not row:
        return None

    def when(name: bytes) -> float | None:
        return float(row[name]) if name in row else None

    return Job(
        id=job_id,
        model=row[b"model"].decode(),
        fields=row[b"fields"],
        status=row[b"status"].decode(),
        created=float(row[b"created"]),
        started=when(b"started"),
        finished=when(b"finished"),
        total=int(row[b"total"]),
        done=int(row[b"done"]),
        failed=int(row[b"failed"]),
        error=row[b"error"].decode() if b"error" in row else None,
    )
