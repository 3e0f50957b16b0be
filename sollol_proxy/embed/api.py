"""The batch jobs' HTTP API (the seed's, under the proxy's own paths; Ollama has none of them).

    POST   /api/embed/batch               {"model", "docs": [...]} or {"model", "input": [...]}
    GET    /api/batch-status              every job (also GET /sollol/batches)
    GET    /sollol/batches/{id}           progress, counts, errors, rate
    GET    /sollol/batches/{id}/results   NDJSON {"index","id","embedding"} in document order
    DELETE /sollol/batches/{id}           cancel a job; a job that is over is deleted

A document is a string or {"id": <string or integer>, "text": <string>}; `truncate`,
`dimensions`, `keep_alive` and `options` go to every sub-batch as in /api/embed. Every value
a client sends is checked and bounded before it is stored.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import orjson
from aiohttp import web

from sollol_proxy.config import Config
from sollol_proxy.embed.jobs import JobRunner, Refused
from sollol_proxy.embed.store import Job, StoreError
from sollol_proxy.wire import gojson
from sollol_proxy.wire.body_budget import BodyHold
from sollol_proxy.wire.errors import JSON_PLAIN, error_response
from sollol_proxy.wire.peek import read_body

log = logging.getLogger("sollol.batch")

SUBMIT = "/api/embed/batch"
STATUS = "/api/batch-status"
PREFIX = "/sollol/batches"
_JOB_PATH = re.compile(r"^/sollol/batches/([0-9a-f]{16})(/results)?$")
_FIELDS = {"truncate", "dimensions", "keep_alive", "options"}
_KEYS = {"model", "docs", "input", *_FIELDS}
MAX_ID_CHARS = 256
MAX_MODEL_CHARS = 512  # Ollama's names are far shorter; the name is kept and shown per job
LIST_LIMIT = 100
PAGE = 1000  # results read from disk at a time
ERRORS_SHOWN = 10


class BadJob(ValueError):
    pass


def _json(value: object, status: int = 200) -> web.Response:
    response = web.Response(status=status, body=gojson.dumps_line(value))
    response.headers["Content-Type"] = JSON_PLAIN
    return response


def _not_allowed(allow: str) -> web.Response:
    """As gin answers a known path with another method."""
    response = web.Response(status=405, body=b"405 method not allowed")
    response.headers["Content-Type"] = "text/plain"
    response.headers["Allow"] = allow
    return response


def _read_job(body: bytes) -> tuple[str, dict[str, Any], list[tuple[bytes | None, str]]]:
    return read_job(orjson.loads(body))


def read_job(payload: Any) -> tuple[str, dict[str, Any], list[tuple[bytes | None, str]]]:
    """The model, the fields for every sub-batch, and the documents (client id JSON, text)."""
    if not isinstance(payload, dict):
        raise BadJob("the body must be a JSON object")
    unknown = sorted(set(payload) - _KEYS)
    if unknown:
        raise BadJob(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadJob("model is required")
    if len(model) > MAX_MODEL_CHARS:
        raise BadJob(f"model: a name of at most {MAX_MODEL_CHARS} characters")
    if "docs" in payload and "input" in payload:
        raise BadJob("give either docs or input, not both")
    docs = _docs(payload["docs"]) if "docs" in payload else _input(payload.get("input"))
    if not docs:
        raise BadJob("no documents: give docs (or input) with at least one")
    fields: dict[str, Any] = {"model": model}
    for name in ("truncate", "dimensions", "keep_alive", "options"):
        if name in payload:
            fields[name] = payload[name]
    _check_fields(fields)
    return model, fields, docs


def _check_fields(fields: dict[str, Any]) -> None:
    if "truncate" in fields and not isinstance(fields["truncate"], bool):
        raise BadJob("truncate must be true or false")
    dims = fields.get("dimensions")
    if "dimensions" in fields and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 0):
        raise BadJob("dimensions must be a non-negative integer")
    keep = fields.get("keep_alive")
    if "keep_alive" in fields and (
        isinstance(keep, bool) or not isinstance(keep, str | int | float)
    ):
        raise BadJob("keep_alive must be a duration string or a number of seconds")
    if "options" in fields and not isinstance(fields["options"], dict):
        raise BadJob("options must be an object")


def _input(value: Any) -> list[tuple[bytes | None, str]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [(None, value)] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [(None, v) for v in value]
    raise BadJob("input must be a string or a list of strings")


def _docs(value: Any) -> list[tuple[bytes | None, str]]:
    if not isinstance(value, list):
        raise BadJob("docs must be a list")
    out: list[tuple[bytes | None, str]] = []
    for index, doc in enumerate(value):
        if isinstance(doc, str):
            out.append((None, doc))
            continue
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("text"), str)
            or set(doc)
            - {
                "id",
                "text",
            }
        ):
            raise BadJob(f'docs[{index}]: expected a string or {{"id": ..., "text": "..."}}')
        client_id = doc.get("id")
        if client_id is not None and (
            isinstance(client_id, bool)
            or not isinstance(client_id, str | int)
            or len(str(client_id)) > MAX_ID_CHARS
        ):
            raise BadJob(
                f"docs[{index}].id: a string or an integer of at most {MAX_ID_CHARS} characters"
            )
        out.append((None if client_id is None else gojson.dumps(client_id), doc["text"]))
    return out


def job_json(job: Job, rate: float | None, note: str | None = None) -> dict[str, Any]:
    pending = job.total - job.done - job.failed
    return {
        "id": job.id,
        "model": job.model,
        "status": job.status,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "total": job.total,
        "done": job.done,
        "failed": job.failed,
        "pending": pending,
        "progress": round((job.done + job.failed) / job.total, 4) if job.total else 1.0,
        "docs_per_s": None if rate is None else round(rate, 2),
        "eta_s": round(pending / rate, 1) if rate and job.status == "running" else None,
        "error": job.error,
        "waiting": note,
        "results_url": f"{PREFIX}/{job.id}/results",
    }


class BatchApi:
    def __init__(self, runner: JobRunner, config: Config) -> None:
        self.runner = runner
        self._config = config

    def reconfigure(self, config: Config) -> None:
        self._config = config

    @staticmethod
    def owns(path: str) -> bool:
        return path in (SUBMIT, STATUS, PREFIX) or path.startswith(PREFIX + "/")

    async def handle(self, request: web.Request, hold: BodyHold) -> web.StreamResponse:
        """`hold`: the request's share of the body budget; a job's documents are counted in it
        while they are read, as a model request's body is."""
        try:
            return await self._handle(request, hold)
        except StoreError as exc:  # before an answer started; after, the connection ends
            return error_response(request.path, exc.status, exc.message)

    async def _handle(self, request: web.Request, hold: BodyHold) -> web.StreamResponse:
        path, method = request.path, request.method
        if path == SUBMIT:
            return await self._submit(request, hold) if method == "POST" else _not_allowed("POST")
        if path in (STATUS, PREFIX):
            return await self._list(request) if method in ("GET", "HEAD") else _not_allowed("GET")
        match = _JOB_PATH.match(path)
        job = await self.runner.job(match.group(1)) if match else None
        if job is None or match is None:
            return _json({"error": "no such batch job"}, 404)
        if match.group(2):
            if method != "GET":
                return _not_allowed("GET")
            return await self._results(request, job)
        if method == "DELETE":
            cancelled = await self.runner.cancel(job.id)
            assert cancelled is not None
            deleted = job.over
            return _json({**job_json(cancelled, None), "deleted": deleted})
        if method not in ("GET", "HEAD"):
            return _not_allowed("DELETE, GET")
        return _json(await self._detail(job))

    async def _submit(self, request: web.Request, hold: BodyHold) -> web.Response:
        config = self._config
        body = await read_body(
            request,
            config.max_body_bytes,
            stall=config.client_limits.body_timeout,
            min_rate=config.client_limits.body_min_rate,
            hold=hold,
        )
        try:
            # Off the event loop: a 60 MiB job takes a second to parse and check.
            model, fields, docs = await asyncio.to_thread(_read_job, body)
        except orjson.JSONDecodeError as exc:
            return error_response(SUBMIT, 400, f"invalid JSON: {exc}")
        except BadJob as exc:
            return error_response(SUBMIT, 400, str(exc))
        try:
            job = await self.runner.submit(model, fields, docs)
        except Refused as exc:
            return error_response(SUBMIT, exc.status, exc.message)
        return _json({**job_json(job, None), "status_url": f"{PREFIX}/{job.id}"}, 202)

    async def _list(self, request: web.Request) -> web.Response:
        runner = self.runner
        limit = _query_int(request, "limit", LIST_LIMIT, 1, 10_000)
        if limit is None:
            return _json({"error": "limit must be an integer from 1 to 10000"}, 400)
        jobs = await runner.store.jobs(limit)
        running = {j.id: j for j in runner.jobs.values() if j.status == "running"}
        shown = [running.get(j.id, j) for j in jobs]
        return _json({"jobs": [job_json(j, runner.rate(j), runner.note(j.id)) for j in shown]})

    async def _detail(self, job: Job) -> dict[str, Any]:
        runner = self.runner
        errors = await runner.store.errors(job.id, ERRORS_SHOWN)
        return {
            **job_json(job, runner.rate(job), runner.note(job.id)),
            "errors": [{"error": e, "documents": n} for e, n in errors],
        }

    async def _results(self, request: web.Request, job: Job) -> web.StreamResponse:
        offset = _query_int(request, "offset", 0, 0, job.total)
        limit = _query_int(request, "limit", job.total, 1, 10**9)
        if offset is None or limit is None:
            return _json({"error": "offset and limit must be non-negative integers"}, 400)
        store = self.runner.store
        page = await store.results(job.id, offset, min(PAGE, limit))  # fails as a 503 here
        response = web.StreamResponse()
        response.headers["Content-Type"] = "application/x-ndjson"
        await response.prepare(request)
        sent = 0
        while True:
            lines = [
                b'{"index":%d,"id":%s,%s}\n'
                % (
                    r.index,
                    r.client_id or b"null",
                    b'"embedding":' + r.embedding
                    if r.embedding is not None
                    else b'"error":' + gojson.dumps(r.error),
                )
                for r in page
            ]
            if lines:
                await response.write(b"".join(lines))
            sent += len(page)
            if len(page) < PAGE or sent >= limit:
                break
            try:
                page = await store.results(job.id, offset + sent, min(PAGE, limit - sent))
            except StoreError as exc:
                # The status is sent: the answer is cut, so that it cannot pass for a whole one.
                log.warning("results of batch job %s cut: %s", job.id, exc.message)
                if request.transport is not None:
                    request.transport.close()
                return response
        await response.write_eof()
        return response


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        return None
    return int(raw)
