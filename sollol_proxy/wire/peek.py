"""Read a request body once and look at only what routing needs. The bytes are forwarded as read."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from sollol_proxy.wire.routes import Route


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the proxy's limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Peek:
    body: bytes
    # The first JSON value of the body when it is an object; None when the body is empty, not
    # JSON, or not an object. The node then answers with Ollama's own error for it.
    payload: dict[str, Any] | None
    model: str
    stream: bool


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


_decoder = json.JSONDecoder()


def first_json_value(body: bytes) -> Any:
    """Like Go's json.Decoder.Decode: the first value counts and trailing bytes are ignored."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        text = body.decode("utf-8")
        value, _ = _decoder.raw_decode(text, len(text) - len(text.lstrip()))
    except (UnicodeDecodeError, ValueError):
        return None
    return value


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


def multipart_field(body: bytes, content_type: str, name: str) -> str:
    """A small text field of a multipart/form-data body (the model of /v1/audio/transcriptions)."""
    match = _BOUNDARY.search(content_type)
    if not match:
        return ""
    delimiter = b"--" + match.group(1).encode()
    wanted = f'name="{name}"'.encode()
    for part in body.split(delimiter):
        head, sep, value = part.partition(b"\r\n\r\n")
        if sep and wanted in head and b"filename=" not in head:
            return value.removesuffix(b"\r\n").decode("utf-8", "replace").strip()
    return ""


# Bound on what a compressed body may inflate to while the proxy looks for the model in it.
MAX_DECODED_PEEK = 64 * 2**20


def decoded_for_peek(body: bytes, encoding: str) -> bytes | None:
    """The body as JSON text, for reading the model only; the node still gets the original bytes.

    gzip and deflate come with Python; zstd and br bodies (Ollama accepts zstd on /v1/responses)
    cannot be read here, so such a request is routed without knowing its model.
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    for wbits in (47, -15):  # gzip or zlib header, then raw deflate
        try:
            return zlib.decompressobj(wbits).decompress(body, MAX_DECODED_PEEK)
        except zlib.error:
            continue
    return None


def peek(route: Route, body: bytes, headers: Mapping[str, str], path_param: str = "") -> Peek:
    content_type = headers.get("Content-Type", "")
    payload: dict[str, Any] | None = None
    model = path_param
    text = decoded_for_peek(body, headers.get("Content-Encoding", "")) if body else b""
    if content_type.lower().startswith("multipart/form-data"):
        model = model or multipart_field(text or b"", content_type, "model")
    elif text:
        value = first_json_value(text)
        payload = value if isinstance(value, dict) else None
    if payload is not None and not model:
        for field in route.model_fields:
            candidate = payload.get(field)
            if isinstance(candidate, str) and candidate.strip():
                model = candidate
                break
    stream = route.streams_by_default
    if payload is not None and isinstance(payload.get("stream"), bool):
        stream = payload["stream"]
    return Peek(body=body, payload=payload, model=model, stream=stream)
