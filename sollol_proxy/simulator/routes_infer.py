"""/api/generate, /api/chat, /api/embed and /api/embeddings (§3.12-§3.15)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

import sollol_proxy.wire.gojson as gojson
from sollol_proxy.simulator.gotypes import ApiError, decode_body, go_quote, parse_keep_alive
from sollol_proxy.simulator.inference import Generation, chat_prompt
from sollol_proxy.simulator.kvcache import render_generate, token_count
from sollol_proxy.simulator.text import (
    context_ids,
    count_tokens,
    embedding,
    legacy_embedding,
    plan_length,
)
from sollol_proxy.simulator.wire import JSON, NDJSON, Stream, error_response, json_response

if TYPE_CHECKING:
    from sollol_proxy.simulator.core import NodeCore

GENERATE_FIELDS = {
    "model": "string",
    "prompt": "string",
    "suffix": "string",
    "system": "string",
    "template": "string",
    "context": "[]int",
    "stream": "bool",
    "raw": "bool",
    "images": "[]api.ImageData",
    "options": "map[string]interface {}",
}
CHAT_FIELDS = {
    "model": "string",
    "messages": "[]api.Message",
    "stream": "bool",
    "tools": "[]api.Tool",
    "options": "map[string]interface {}",
}
EMBED_FIELDS = {
    "model": "string",
    "truncate": "bool",
    "dimensions": "int",
    "options": "map[string]interface {}",
}
EMBEDDINGS_FIELDS = {"model": "string", "prompt": "string", "options": "map[string]interface {}"}


async def _mid_stream_error(out: Stream, message: str) -> web.StreamResponse:
    """A runner failure: before the first byte streamResponse answers 500 application/json
    (no charset, no newline); afterwards one more line {"error":...} and the stream ends."""
    if not out.started:
        return error_response(500, message, JSON)
    await out.send(gojson.dumps_line({"error": message}))
    return await out.finish()


def _options(req: dict[str, Any]) -> dict[str, Any]:
    opts = req.get("options")
    return opts if isinstance(opts, dict) else {}


async def generate(node: NodeCore, request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic_ns()
    req = decode_body(await request.read(), "GenerateRequest", GENERATE_FIELDS)
    keep_alive = parse_keep_alive(req.get("keep_alive"))
    name = req.get("model") or ""
    model = node.lookup(name)
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    prompt = req.get("prompt") or ""
    if not prompt and keep_alive == 0:
        node._sched.expire_now(model)
        return json_response(
            {
                "model": name,
                "created_at": node.created_at(),
                "response": "",
                "done": True,
                "done_reason": "unload",
            }
        )
    if "completion" not in model.capabilities:
        raise ApiError(400, f'"{name}" does not support generate')
    options = _options(req)
    async with Generation(node, request, model, options, keep_alive, t0) as gen:
        await gen.schedule()
        if not prompt:
            return json_response(
                {
                    "model": name,
                    "created_at": node.created_at(),
                    "response": "",
                    "done": True,
                    "done_reason": "load",
                }
            )
        seed = render_generate(req.get("system") or "", prompt)
        prompt_count = token_count(seed)
        n, reason = plan_length(options)
        mid = node.faults.mid_stream_error
        if req.get("stream") is False:
            toks = await gen.collect(seed, n)
            if mid is not None:
                return error_response(500, mid[1])
            body: dict[str, Any] = {
                "model": name,
                "created_at": node.created_at(),
                "response": "".join(toks),
                "done": True,
                "done_reason": reason,
            }
            if not req.get("raw"):
                body["context"] = context_ids(seed + "".join(toks), prompt_count + n)
            return json_response(body | gen.metrics(prompt_count, n))
        out = Stream(request, node.faults, NDJSON)
        text = []
        async for tok in gen.tokens(seed, n):
            if mid is not None and out.chunks >= mid[0]:
                return await _mid_stream_error(out, mid[1])
            text.append(tok)
            await out.send_json(
                {"model": name, "created_at": node.created_at(), "response": tok, "done": False}
            )
        if mid is not None:
            return await _mid_stream_error(out, mid[1])
        final: dict[str, Any] = {
            "model": name,
            "created_at": node.created_at(),
            "response": "",
            "done": True,
            "done_reason": reason,
        }
        if not req.get("raw"):
            final["context"] = context_ids(seed + "".join(text), prompt_count + n)
        await out.send_json(final | gen.metrics(prompt_count, n))
        return await out.finish()


def _assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


async def chat(node: NodeCore, request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic_ns()
    req = decode_body(await request.read(), "ChatRequest", CHAT_FIELDS)
    keep_alive = parse_keep_alive(req.get("keep_alive"))
    name = req.get("model") or ""
    if not name:
        raise ApiError(400, "model is required")
    model = node.lookup(name)
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    messages = req.get("messages") or []
    if not messages and keep_alive == 0:
        node._sched.expire_now(model)
        return json_response(
            {
                "model": name,
                "created_at": node.created_at(),
                "message": _assistant(""),
                "done": True,
                "done_reason": "unload",
            }
        )
    if "completion" not in model.capabilities:
        raise ApiError(400, f'"{name}" does not support chat')
    if req.get("tools") and "tools" not in model.capabilities:
        raise ApiError(400, f"registry.ollama.ai/library/{model.name} does not support tools")
    options = _options(req)
    async with Generation(node, request, model, options, keep_alive, t0) as gen:
        await gen.schedule()
        if not messages:
            return json_response(
                {
                    "model": name,
                    "created_at": node.created_at(),
                    "message": _assistant(""),
                    "done": True,
                    "done_reason": "load",
                }
            )
        return await chat_body(node, request, gen, req, name, chat_prompt(messages))


async def chat_body(
    node: NodeCore,
    request: web.Request,
    gen: Generation,
    req: dict[str, Any],
    name: str,
    seed: str,
) -> web.StreamResponse:
    prompt_count = token_count(seed)
    n, reason = plan_length(_options(req))
    mid = node.faults.mid_stream_error
    if req.get("stream") is False:
        toks = await gen.collect(seed, n)
        if mid is not None:
            return error_response(500, mid[1])
        return json_response(
            {
                "model": name,
                "created_at": node.created_at(),
                "message": _assistant("".join(toks)),
                "done": True,
                "done_reason": reason,
            }
            | gen.metrics(prompt_count, n)
        )
    out = Stream(request, node.faults, NDJSON)
    async for tok in gen.tokens(seed, n):
        if mid is not None and out.chunks >= mid[0]:
            return await _mid_stream_error(out, mid[1])
        await out.send_json(
            {
                "model": name,
                "created_at": node.created_at(),
                "message": _assistant(tok),
                "done": False,
            }
        )
    if mid is not None:
        return await _mid_stream_error(out, mid[1])
    await out.send_json(
        {
            "model": name,
            "created_at": node.created_at(),
            "message": _assistant(""),
            "done": True,
            "done_reason": reason,
        }
        | gen.metrics(prompt_count, n)
    )
    return await out.finish()


def embed_inputs(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ApiError(400, "invalid input type")


async def embed(node: NodeCore, request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic_ns()
    req = decode_body(await request.read(), "EmbedRequest", EMBED_FIELDS)
    keep_alive = parse_keep_alive(req.get("keep_alive"))
    name = req.get("model") or ""
    if not name:
        raise ApiError(404, "model '' not found")
    inputs = embed_inputs(req.get("input"))
    model = node.lookup(name)
    if model is None:
        raise ApiError(404, f"model {go_quote(name)} not found, try pulling it first")
    async with Generation(node, request, model, _options(req), keep_alive, t0) as gen:
        await gen.schedule()
        if not inputs:
            return json_response({"model": name, "embeddings": []})
        assert gen.runner is not None
        count = sum(count_tokens(t) for t in inputs)
        if (
            req.get("truncate") is False
            and max(count_tokens(t) for t in inputs) > gen.runner.num_ctx
        ):
            raise ApiError(400, "the input length exceeds the context length")
        await gen.embed(count)
        dims = req.get("dimensions")
        dim = dims if isinstance(dims, int) and dims > 0 else 8
        vectors = [embedding(t, dim) for t in inputs]
        return json_response({"model": name, "embeddings": vectors} | gen.embed_metrics(count))


async def embeddings(node: NodeCore, request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic_ns()
    req = decode_body(await request.read(), "EmbeddingRequest", EMBEDDINGS_FIELDS)
    keep_alive = parse_keep_alive(req.get("keep_alive"))
    name = req.get("model") or ""
    if not name:
        raise ApiError(400, "model is required")
    model = node.lookup(name)
    if model is None:
        raise ApiError(404, f"model {go_quote(name)} not found, try pulling it first")
    prompt = req.get("prompt") or ""
    async with Generation(node, request, model, _options(req), keep_alive, t0) as gen:
        await gen.schedule()
        if not prompt:
            return json_response({"embedding": []})
        await gen.embed(count_tokens(prompt))
        return json_response({"embedding": legacy_embedding(prompt)})
