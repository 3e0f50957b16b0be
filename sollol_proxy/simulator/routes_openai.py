"""OpenAI-compatible /v1 routes (§3.17, §3.18).

Errors raised while the /v1 middleware parses the request use gin's c.JSON (charset, no
newline); errors of the inner /api handler are rewrapped by the writer (no charset, "\\n")."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

import sollol_proxy.wire.gojson as gojson
from sollol_proxy.simulator.gotypes import ApiError
from sollol_proxy.simulator.inference import Generation, chat_prompt
from sollol_proxy.simulator.kvcache import render_generate, token_count
from sollol_proxy.simulator.routes_openai_models import MiddlewareError, middleware_body
from sollol_proxy.simulator.routes_openai_models import (
    embeddings as embeddings,  # re-exported for routing
)
from sollol_proxy.simulator.routes_openai_models import list_models as list_models
from sollol_proxy.simulator.routes_openai_models import retrieve_model as retrieve_model
from sollol_proxy.simulator.text import plan_length
from sollol_proxy.simulator.wire import SSE, Stream, v1_error, v1_json

if TYPE_CHECKING:
    from sollol_proxy.simulator.core import NodeCore

_DET_CREATED = 1767225600  # 2026-01-01T00:00:00Z
_DONE = b"data: [DONE]\n\n"


def _ids(node: NodeCore, prefix: str) -> tuple[str, int]:
    if node.deterministic:
        return f"{prefix}-123", _DET_CREATED
    return f"{prefix}-{random.randrange(999)}", int(time.time())


def _sse(obj: Any) -> bytes:
    return b"data: " + gojson.dumps(obj) + b"\n\n"


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _setup(
    node: NodeCore, request: web.Request, req: dict[str, Any], what: str, t0: int
) -> Generation:
    name = req.get("model") or ""
    if not name and what == "chat":
        raise ApiError(400, "model is required")
    model = node.lookup(name)
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    if "completion" not in model.capabilities:
        raise ApiError(400, f'"{name}" does not support {what}')
    options: dict[str, Any] = {}
    if isinstance(req.get("max_tokens"), int):
        options["num_predict"] = req["max_tokens"]
    return Generation(node, request, model, options, None, t0)


async def chat_completions(node: NodeCore, request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic_ns()
    try:
        req = middleware_body(
            await request.read(),
            "ChatCompletionRequest",
            {"model": "string", "messages": "[]openai.Message", "stream": "bool"},
        )
    except MiddlewareError as exc:
        return v1_error(400, str(exc), from_middleware=True)
    messages = req.get("messages") or []
    if not messages:
        return v1_error(400, "[] is too short - 'messages'", from_middleware=True)
    seed = chat_prompt(
        [
            {"role": m.get("role"), "content": _text_of(m.get("content"))}
            for m in messages
            if isinstance(m, dict)
        ]
    )
    name = req.get("model") or ""
    cid, created = _ids(node, "chatcmpl")
    try:
        async with await _setup(node, request, req, "chat", t0) as gen:
            await gen.schedule()
            pc = token_count(seed)
            n, reason = plan_length(gen.options)
            mid = node.faults.mid_stream_error
            head = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "system_fingerprint": "fp_ollama",
            }
            if not req.get("stream"):
                text = "".join(await gen.collect(seed, n))
                if mid is not None:
                    raise ApiError(500, mid[1])
                return v1_json(
                    {
                        "id": cid,
                        "object": "chat.completion",
                        "created": created,
                        "model": name,
                        "system_fingerprint": "fp_ollama",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": reason,
                            }
                        ],
                        "usage": _usage(pc, n),
                    }
                )
            out = Stream(request, node.faults, SSE)

            async def crashed() -> web.StreamResponse:
                # §4.2 (derived): the error object decodes as an empty ChatResponse.
                if not out.started:
                    return v1_error(500, mid[1] if mid else "")
                await out.send(
                    _sse(
                        head
                        | {
                            "model": "",
                            "choices": [
                                {"index": 0, "delta": {"content": ""}, "finish_reason": None}
                            ],
                        }
                    )
                )
                return await out.finish()

            async for tok in gen.tokens(seed, n):
                if mid is not None and out.chunks >= mid[0]:
                    return await crashed()
                delta = {"content": tok} if out.chunks else {"role": "assistant", "content": tok}
                await out.send(
                    _sse(head | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                )
            if mid is not None:
                return await crashed()
            await out.send(
                _sse(head | {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
            )
            if (req.get("stream_options") or {}).get("include_usage"):
                await out.send(_sse(head | {"choices": [], "usage": _usage(pc, n)}))
            await out.send(_DONE)
            return await out.finish()
    except ApiError as exc:
        return v1_error(exc.status, exc.message)


async def completions(node: NodeCore, request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic_ns()
    try:
        req = middleware_body(
            await request.read(),
            "CompletionRequest",
            {"model": "string", "prompt": "string", "stream": "bool"},
        )
    except MiddlewareError as exc:
        return v1_error(400, str(exc), from_middleware=True)
    seed = render_generate("", req.get("prompt") or "")
    name = req.get("model") or ""
    cid, created = _ids(node, "cmpl")
    usage_on = bool((req.get("stream_options") or {}).get("include_usage"))
    try:
        async with await _setup(node, request, req, "generate", t0) as gen:
            await gen.schedule()
            pc = token_count(seed)
            n, reason = plan_length(gen.options)
            mid = node.faults.mid_stream_error
            if not req.get("stream"):
                text = "".join(await gen.collect(seed, n))
                if mid is not None:
                    raise ApiError(500, mid[1])
                return v1_json(
                    {
                        "id": cid,
                        "object": "text_completion",
                        "created": created,
                        "model": name,
                        "system_fingerprint": "fp_ollama",
                        "choices": [{"text": text, "index": 0, "finish_reason": reason}],
                        "usage": _usage(pc, n),
                    }
                )
            out = Stream(request, node.faults, SSE)

            def chunk(text: str, finish: str | None, model: str = name) -> bytes:
                obj: dict[str, Any] = {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "choices": [{"text": text, "index": 0, "finish_reason": finish}],
                    "model": model,
                    "system_fingerprint": "fp_ollama",
                }
                if usage_on:
                    obj["usage"] = _usage(0, 0)
                return _sse(obj)

            async for tok in gen.tokens(seed, n):
                if mid is not None and out.chunks >= mid[0]:
                    break
                await out.send(chunk(tok, None))
            if mid is not None:
                if not out.started:
                    return v1_error(500, mid[1])
                # §4.2 (derived): the error line decodes as an empty GenerateResponse, whose
                # empty Model ToCompleteChunk copies.
                await out.send(chunk("", None, model=""))
                return await out.finish()
            await out.send(chunk("", reason))
            if usage_on:
                await out.send(
                    _sse(
                        {
                            "id": cid,
                            "object": "text_completion",
                            "created": created,
                            "choices": [],
                            "model": name,
                            "system_fingerprint": "fp_ollama",
                            "usage": _usage(pc, n),
                        }
                    )
                )
            await out.send(_DONE)
            return await out.finish()
    except ApiError as exc:
        return v1_error(exc.status, exc.message)
