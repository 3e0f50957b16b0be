"""How a finished (non-streamed) response goes out on the wire, as Go's net/http sends it,
and what node.responses records of it.

net/http buffers a handler's writes in a 2048-byte bufio.Writer (bufferBeforeChunkingSize).
A body that fits and was not flushed is sent with ``Content-Length`` when the handler
returns; a larger one overflows the buffer while the handler is still running, so the
headers go out with ``Transfer-Encoding: chunked`` (one chunk: gin writes the JSON in a
single Write). HEAD responses carry no body either way."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http import HttpVersion11

from sollol_proxy.simulator.wire import (
    FAULT_ABORT,
    STREAM_KEY,
    Faults,
    RecordedResponse,
    RecordingStreamResponse,
    abort_connection,
)

GO_WRITE_BUFFER = 2048  # net/http bufferBeforeChunkingSize
_NO_BODY_STATUS = (204, 304)


class RefuseProtocol(asyncio.Protocol):
    """Accepted and immediately reset: to the client the node looks dead."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        else:
            transport.close()


async def send_response(
    request: web.Request, resp: web.StreamResponse, faults: Faults
) -> web.StreamResponse:
    """Frame a handler's finished response like net/http, or apply ``faults.truncate_body``.
    Streams (already written) pass through."""
    if not isinstance(resp, web.Response) or request.method == "HEAD":
        return resp
    body = resp.body
    if not isinstance(body, bytes | bytearray) or resp.status in _NO_BODY_STATUS:
        return resp
    cut = faults.truncate_body
    ctype = resp.headers.get("Content-Type", "")
    if cut is not None and ctype.startswith("application/json") and 0 <= cut < len(body):
        await _truncated(request, resp, bytes(body), cut)
    if len(body) > GO_WRITE_BUFFER and request.version >= HttpVersion11:
        resp.enable_chunked_encoding()
    return resp


async def _truncated(request: web.Request, resp: web.Response, body: bytes, cut: int) -> None:
    """Announce the whole body's Content-Length, write its first ``cut`` bytes, reset."""
    out = RecordingStreamResponse(status=resp.status, headers=dict(resp.headers))
    out.content_length = len(body)
    request[STREAM_KEY] = out
    await out.prepare(request)  # a StreamResponse sends its headers at once
    if cut:
        await out.write(body[:cut])
    await abort_connection(request)


def recorded(
    request: web.Request, resp: web.StreamResponse | None, complete: bool
) -> RecordedResponse:
    """The RecordedResponse for node.responses: the exact body bytes written."""
    stream = request.get(STREAM_KEY)
    if stream is not None:
        status, ctype, body = (
            stream.status,
            stream.headers.get("Content-Type", ""),
            bytes(stream.recorded),
        )
    elif isinstance(resp, web.Response):
        body = b"" if request.method == "HEAD" or resp.body is None else bytes(resp.body)
        status, ctype = resp.status, resp.headers.get("Content-Type", "")
    else:
        status, ctype, body, complete = 0, "", b"", False
    return RecordedResponse(
        request.method,
        request.path,
        status,
        ctype,
        body,
        complete and not request.get(FAULT_ABORT),
    )
