"""Response building with Ollama's exact framing (§1.2) and the node's fault knobs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, NoReturn

from aiohttp import web
from multidict import CIMultiDict

import sollol_proxy.wire.gojson as gojson

JSON_UTF8 = "application/json; charset=utf-8"  # gin c.JSON
JSON = "application/json"  # streamResponse/waitForStream errors, /v1 writers
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TEXT_UTF8 = "text/plain; charset=utf-8"  # c.String
TEXT = "text/plain"  # gin's own 404/405 bodies

FAULT_ABORT = web.RequestKey("sim_fault_abort", bool)
STREAM_KEY = web.RequestKey("sim_stream", "RecordingStreamResponse")
STOPPING = web.AppKey("sim_stopping", asyncio.Event)  # set by node.stop()


@dataclass
class Faults:
    """Failure modes, settable at any time; see the package docstring."""

    refuse: bool = False
    reset_before_headers: bool = False
    reset_after_chunks: int | None = None
    first_byte_delay: float = 0.0
    status_error: tuple[int, str] | None = None
    mid_stream_error: tuple[int, str] | None = None
    stall_after_chunks: int | None = None
    truncate_body: int | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query_string: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass(frozen=True)
class RecordedResponse:
    method: str
    path: str
    status: int  # 0 when the connection was reset before any response
    content_type: str
    body: bytes
    complete: bool = True


def respond(
    status: int,
    body: bytes | None = None,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A fixed-length response. The Content-Type header is set verbatim because aiohttp's
    content_type/charset setters would re-format it; no Content-Type at all when None."""
    hdrs = dict(headers or {})
    if content_type is not None:
        hdrs["Content-Type"] = content_type
    return web.Response(status=status, body=body, headers=hdrs)


def json_response(obj: Any, status: int = 200, content_type: str = JSON_UTF8) -> web.Response:
    """gin ``c.JSON``: json.Marshal, no trailing newline."""
    return respond(status, gojson.dumps(obj), content_type)


def error_response(status: int, message: str, content_type: str | None = None) -> web.Response:
    return respond(status, gojson.dumps({"error": message}), content_type or JSON_UTF8)


def v1_error_type(status: int) -> str:
    # openai.NewError (§3.18)
    if status == 400:
        return "invalid_request_error"
    return "not_found_error" if status == 404 else "api_error"


def v1_error(status: int, message: str, *, from_middleware: bool = False) -> web.Response:
    """/v1 error envelope. Errors the middleware raises itself go through c.JSON (charset, no
    newline); errors of the inner handler are rewrapped with json.Encoder (no charset, "\\n")."""
    env = {
        "error": {"message": message, "type": v1_error_type(status), "param": None, "code": None}
    }
    if from_middleware:
        return json_response(env, status)
    return respond(status, gojson.dumps_line(env), JSON)


def v1_json(obj: Any) -> web.Response:
    return respond(200, gojson.dumps_line(obj), JSON)


class RecordingStreamResponse(web.StreamResponse):
    """Keeps a copy of every body byte that was actually written."""

    def __init__(self, *, status: int, headers: dict[str, str]) -> None:
        super().__init__(status=status, headers=headers)
        self.recorded = bytearray()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await super().write(data)
        self.recorded += data


async def abort_connection(request: web.Request) -> NoReturn:
    """Drop the TCP connection without a clean end (RST), then end the handler the way a
    lost connection ends it."""
    request[FAULT_ABORT] = True
    transport = request.transport
    if transport is not None:
        # abort() discards unsent bytes: let what was written reach the socket first.
        for _ in range(1000):  # at most about a second
            if not transport.get_write_buffer_size():
                break
            await asyncio.sleep(0.001)
        transport.abort()
    raise asyncio.CancelledError


async def stall(request: web.Request) -> NoReturn:
    """Go silent on an open connection: until the client goes away (aiohttp then cancels
    the handler) or the node stops (the connection is dropped, so stop() stays quick)."""
    await request.app[STOPPING].wait()
    await abort_connection(request)


class Stream:
    """A chunked response written one object per write (one flush per object, §1.4).

    Headers go out with the first chunk, as with gin's c.Stream. ``faults.reset_after_chunks``
    and ``faults.stall_after_chunks`` are applied here, so they cover every NDJSON and SSE
    stream (a stall also holds back the end of a stream that has sent exactly N chunks)."""

    def __init__(self, request: web.Request, faults: Faults, content_type: str) -> None:
        self.request = request
        self.faults = faults
        self.content_type = content_type
        self.resp: RecordingStreamResponse | None = None
        self.chunks = 0

    @property
    def started(self) -> bool:
        return self.resp is not None

    async def send(self, chunk: bytes) -> None:
        limit = self.faults.reset_after_chunks
        if limit is not None and self.chunks >= limit:
            await abort_connection(self.request)
        await self._maybe_stall()
        if self.resp is None:
            self.resp = RecordingStreamResponse(
                status=200, headers={"Content-Type": self.content_type}
            )
            self.request[STREAM_KEY] = self.resp
            await self.resp.prepare(self.request)
        await self.resp.write(chunk)
        self.chunks += 1

    async def send_json(self, obj: Any) -> None:
        await self.send(gojson.dumps_line(obj))

    async def _maybe_stall(self) -> None:
        limit = self.faults.stall_after_chunks
        if limit is not None and self.chunks >= limit:
            await stall(self.request)

    async def finish(self) -> web.StreamResponse:
        await self._maybe_stall()
        if self.resp is None:  # an empty stream still answers 200 with the stream's type
            self.resp = RecordingStreamResponse(
                status=200, headers={"Content-Type": self.content_type}
            )
            self.request[STREAM_KEY] = self.resp
            await self.resp.prepare(self.request)
        await self.resp.write_eof()
        return self.resp
