"""OpenAI-compatible /v1/embeddings and /v1/models (§3.17, §3.18), and the /v1
middleware's request decoding shared with routes_openai."""

from __future__ import annotations

import base64
import struct
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sollol_proxy.simulator.gotypes import ApiError, decode_body, go_quote, parse_go_time
from sollol_proxy.simulator.inference import Generation
from sollol_proxy.simulator.models import display_name
from sollol_proxy.simulator.routes_infer import embed_inputs
from sollol_proxy.simulator.text import count_tokens, embedding
from sollol_proxy.simulator.wire import v1_error, v1_json

if TYPE_CHECKING:
    from sollol_proxy.simulator.core import NodeCore


def middleware_body(raw: bytes, struct_name: str, fields: dict[str, str]) -> dict[str, Any]:
    try:
        return decode_body(raw, struct_name, fields)
    except ApiError as exc:
        # Outside gin's /api handlers an empty body is just io.EOF.
        msg = "EOF" if exc.message == "missing request body" else exc.message
        raise MiddlewareError(msg) from None


class MiddlewareError(Exception):
    pass


def _b64(vec: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


async def embeddings(node: NodeCore, request: web.Request) -> web.StreamResponse:
    t0 = time.monotonic_ns()
    try:
        req = middleware_body(
            await request.read(), "EmbedRequest", {"model": "string", "encoding_format": "string"}
        )
        fmt = req.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise MiddlewareError(
                f"Invalid value for 'encoding_format' = {fmt}. "
                "Supported values: ['float', 'base64']."
            )
        try:
            inputs = embed_inputs(req.get("input"))
        except ApiError as exc:
            raise MiddlewareError(exc.message) from None
        if not inputs:
            raise MiddlewareError("invalid input")
    except MiddlewareError as exc:
        return v1_error(400, str(exc), from_middleware=True)
    name = req.get("model") or ""
    try:
        model = node.lookup(name)
        if model is None:
            raise ApiError(404, f"model {go_quote(name)} not found, try pulling it first")
        async with Generation(node, request, model, {}, None, t0) as gen:
            await gen.schedule()
            count = sum(count_tokens(t) for t in inputs)
            await gen.embed(count)
            data = []
            for i, text in enumerate(inputs):
                vec = embedding(text)
                data.append(
                    {
                        "object": "embedding",
                        "embedding": _b64(vec) if fmt == "base64" else vec,
                        "index": i,
                    }
                )
            return v1_json(
                {
                    "object": "list",
                    "data": data,
                    "model": name,
                    "usage": {"prompt_tokens": count, "total_tokens": count},
                }
            )
    except ApiError as exc:
        return v1_error(exc.status, exc.message)


def _model_obj(node: NodeCore, ident: str) -> dict[str, Any]:
    m = node.lookup(ident)
    assert m is not None
    return {
        "id": ident,
        "object": "model",
        "created": parse_go_time(m.modified_at) // 10**9,
        "owned_by": m.namespace,
    }


async def list_models(node: NodeCore, request: web.Request) -> web.StreamResponse:
    data = [_model_obj(node, m.name) for m in node.sorted_models()]
    return v1_json({"object": "list", "data": data or None})  # nil slice -> null (§3.17)


async def retrieve_model(node: NodeCore, request: web.Request) -> web.StreamResponse:
    ident = request.match_info.get("model", "")
    if node.lookup(ident) is None:
        return v1_error(404, f"model '{display_name(ident)}' not found")
    return v1_json(_model_obj(node, ident))
