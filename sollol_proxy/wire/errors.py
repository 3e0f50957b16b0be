"""Errors the proxy itself answers, in the shape the client on that route expects from Ollama."""

from __future__ import annotations

from aiohttp import web

import sollol_proxy.wire.gojson as gojson

# Content types exactly as Ollama writes them (reference 1.2).
JSON_CHARSET = "application/json; charset=utf-8"
JSON_PLAIN = "application/json"


def _set_body(response: web.Response, body: bytes, content_type: str) -> web.Response:
    # Setting the header directly keeps the exact string (aiohttp's content_type= would rewrite it).
    response.body = body
    response.headers["Content-Type"] = content_type
    return response


def error_response(path: str, status: int, message: str) -> web.Response:
    """An error for a request on `path`, in that API's own envelope."""
    response = web.Response(status=status)
    if path.startswith("/v1/messages"):
        body = gojson.dumps_line(
            {"type": "error", "error": {"type": _anthropic_type(status), "message": message}}
        )
        return _set_body(response, body, JSON_PLAIN)
    if path.startswith("/v1/"):
        body = gojson.dumps_line(
            {
                "error": {
                    "message": message,
                    "type": _openai_type(status),
                    "param": None,
                    "code": None,
                }
            }
        )
        return _set_body(response, body, JSON_PLAIN)
    return _set_body(response, gojson.dumps({"error": message}), JSON_CHARSET)


def _openai_type(status: int) -> str:
    return {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")


def _anthropic_type(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "overloaded_error",
    }.get(status, "api_error")


def stream_error_bytes(path: str, content_type: str, message: str, tail: bytes) -> bytes:
    """The last bytes of a stream that broke after the client already got some of it.

    NDJSON gets Ollama's own in-stream error line (reference 4.2), which every client raises on.
    SSE gets an error event that the OpenAI and Anthropic SDKs raise on, instead of Ollama's
    silent truncation. `tail` is the end of what was already written: a half-written line or
    event is closed first so that the error parses on its own.
    """
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "application/x-ndjson":
        close = b"" if not tail or tail.endswith(b"\n") else b"\n"
        return close + gojson.dumps_line({"error": message})
    if ctype == "text/event-stream":
        close = (
            b""
            if not tail or tail.endswith(b"\n\n")
            else b"\n"
            if tail.endswith(b"\n")
            else b"\n\n"
        )
        if path.startswith("/v1/messages"):
            payload = {"type": "error", "error": {"type": "api_error", "message": message}}
            return close + b"event: error\ndata: " + gojson.dumps(payload) + b"\n\n"
        payload = {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
        return close + b"data: " + gojson.dumps(payload) + b"\n\n"
    return b""
