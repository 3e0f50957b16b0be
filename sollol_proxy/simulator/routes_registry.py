"""/api/pull, /api/push and /api/create: progress streams (§3.6-§3.8).

A route builds a list of steps; ``run_progress`` plays them either as an NDJSON stream or,
with ``"stream": false``, the way ``waitForStream`` does (one final object, or the error
with ``application/json`` and the status carried by the error)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from aiohttp import web

import sollol_proxy.wire.gojson as gojson
from sollol_proxy.simulator.gotypes import ApiError, decode_body
from sollol_proxy.simulator.models import SimModel, parse_name, sha256_hex
from sollol_proxy.simulator.routes_models import normalise_digest
from sollol_proxy.simulator.wire import JSON, NDJSON, Stream, error_response, json_response

if TYPE_CHECKING:
    from sollol_proxy.simulator.core import NodeCore

INVALID_NAME = "invalid model name"


@dataclass(frozen=True)
class Fail:
    status: int
    message: str


Step = dict[str, Any] | Fail | Callable[[], None]


async def run_progress(
    node: NodeCore, request: web.Request, stream: bool, steps: list[Step]
) -> web.StreamResponse:
    if not stream:
        for step in steps:
            if isinstance(step, Fail):
                return error_response(step.status, step.message, JSON)
            if callable(step):
                step()
        return json_response({"status": "success"}, content_type=JSON)
    out = Stream(request, node.faults, NDJSON)
    for step in steps:
        if callable(step):
            step()
            continue
        if out.started and node.token_delay > 0:
            await asyncio.sleep(node.token_delay)
        if isinstance(step, Fail):
            if not out.started:  # streamResponse before the first byte (§4.2)
                return error_response(step.status, step.message, JSON)
            await out.send(gojson.dumps_line({"error": step.message}))
            break
        await out.send_json(step)
    return await out.finish()


def _layer_line(verb: str, digest: str, total: int) -> dict[str, Any]:
    return {
        "status": f"{verb} {digest[7:19]}",
        "digest": digest,
        "total": total,
        "completed": total,
    }


def pull_steps(node: NodeCore, name: str, final: bool = True) -> list[Step]:
    steps: list[Step] = [{"status": "pulling manifest"}]
    source = node.catalog_lookup(name)
    if source is None:
        steps.append(Fail(500, "pull model manifest: file does not exist"))
        return steps
    steps += [_layer_line("pulling", d, size) for d, size in source.layers()]
    steps += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}]
    target = parse_name(name)
    assert target is not None
    steps.append(lambda: node.add_model(source.renamed(target.display, node.now_local())))
    if final:
        steps.append({"status": "success"})
    return steps


def _stream_flag(req: dict[str, Any]) -> bool:
    return req.get("stream") is not False


async def pull(node: NodeCore, request: web.Request) -> web.StreamResponse:
    req = decode_body(
        await request.read(),
        "PullRequest",
        {"model": "string", "name": "string", "insecure": "bool", "stream": "bool"},
    )
    name = req.get("model") or req.get("name") or ""
    if parse_name(name) is None:
        raise ApiError(400, INVALID_NAME)
    return await run_progress(node, request, _stream_flag(req), pull_steps(node, name))


async def push(node: NodeCore, request: web.Request) -> web.StreamResponse:
    req = decode_body(
        await request.read(),
        "PushRequest",
        {"model": "string", "name": "string", "insecure": "bool", "stream": "bool"},
    )
    name = req.get("model") or req.get("name") or ""
    if not name:
        raise ApiError(400, "model is required")
    parsed = parse_name(name)
    if parsed is None:
        raise ApiError(400, INVALID_NAME)
    steps: list[Step] = [{"status": "retrieving manifest"}]
    m = node.lookup(name)
    if m is None:
        path = (
            f"/root/.ollama/models/manifests/{parsed.host}/{parsed.namespace}/"
            f"{parsed.model}/{parsed.tag}"
        )
        steps += [
            {"status": "couldn't retrieve manifest"},
            Fail(500, f"open {path}: no such file or directory"),
        ]
    else:
        steps += [_layer_line("pushing", d, size) for d, size in m.layers()]
        steps += [{"status": "pushing manifest"}, {"status": "success"}]
    return await run_progress(node, request, _stream_flag(req), steps)


async def create(node: NodeCore, request: web.Request) -> web.StreamResponse:
    req = decode_body(
        await request.read(),
        "CreateRequest",
        {
            "model": "string",
            "name": "string",
            "from": "string",
            "files": "map[string]string",
            "stream": "bool",
            "system": "string",
            "template": "string",
        },
    )
    name = req.get("model") or req.get("name") or ""
    target = parse_name(name)
    if target is None:
        raise ApiError(400, INVALID_NAME)
    base_name = req.get("from") or ""
    files = req.get("files") or {}
    steps: list[Step] = []
    if not base_name and not files:
        steps.append(Fail(400, "neither 'from' or 'files' was specified"))
        return await run_progress(node, request, _stream_flag(req), steps)
    size = 0
    if files:
        steps.append({"status": "parsing GGUF"})
        for digest in files.values():
            key = normalise_digest(str(digest)) if isinstance(digest, str) else ""
            if key not in node.blobs:
                steps.append(Fail(400, f"blob {digest} not found on this server"))
                return await run_progress(node, request, _stream_flag(req), steps)
            size += node.blobs[key]
            steps.append({"status": f"using existing layer {key}"})
    base = node.lookup(base_name) if base_name else None
    if base_name and base is None:
        # Ollama pulls a missing base model first (parseFromModel).
        pulled = pull_steps(node, base_name, final=False)
        steps += pulled
        if any(isinstance(s, Fail) for s in pulled):
            return await run_progress(node, request, _stream_flag(req), steps)
    if base_name:
        layers = (
            node.lookup(base_name) or node.catalog_lookup(base_name) or SimModel(base_name)
        ).layers()
        steps += [{"status": f"using existing layer {d}"} for d, _ in layers]
    if req.get("system"):
        steps.append({"status": "creating system layer"})
    if req.get("template"):
        steps.append({"status": "creating template layer"})
    steps.append({"status": "writing manifest"})

    def _store() -> None:
        src = node.lookup(base_name) if base_name else None
        digest = sha256_hex(f"created:{target.display}:{base_name}:{sorted(files.items())}")
        made = (
            replace(src, name=target.display, digest=digest)
            if src is not None
            else SimModel(target.display, size=max(size, 1), digest=digest)
        )
        node.add_model(replace(made, modified_at=node.now_local()))

    steps += [_store, {"status": "success"}]
    return await run_progress(node, request, _stream_flag(req), steps)
