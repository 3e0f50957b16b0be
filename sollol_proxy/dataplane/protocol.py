"""One client connection on the data plane: framing, timers, one request at a time, hand-over.

Every accepted connection starts here. For each request the head is read (head.py); a request
of the hot routes is served here, through the same handler as the aiohttp path; anything else
hands the connection, with the bytes of that request, to aiohttp's protocol for good (a client
that mixes fleet views with chats on one connection is then served by aiohttp alone).

The limits of the aiohttp path hold here too: the connection book and its per-client cap (an
over-limit connection is handed over at once, to be answered there), the header deadline from the
connection's opening and then from each next request's first byte, the keep-alive idle bound
between requests, TCP keep-alive, the write bound of a client that stops reading (stall.py); the
body's pace is bounded where the handler reads it. A client that disconnects cancels its
request, which closes the node's request (reference 1.4).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_writer import StreamWriter

from sollol_proxy.dataplane.head import HEAD_END, read_head
from sollol_proxy.dataplane.request import FastRequest, Prepare
from sollol_proxy.lifecycle.limits import MAX_HEADER_FIELDS, Limits, ProxyProtocol
from sollol_proxy.lifecycle.sockets import peer_address, set_keepalive
from sollol_proxy.lifecycle.stall import StallTimer, bound_unsent
from sollol_proxy.wire.errors import error_response
from sollol_proxy.wire.logsafe import loggable

log = logging.getLogger("sollol.dataplane")
# Bytes of a next request kept while one is answered (pipelining) before reading pauses.
PIPELINED_BYTES = 2**16
# The end of a head whose lines end in a bare LF, which llhttp refuses: aiohttp answers it (400).
BARE_LF_END = b"\n\n"


class Plane(Protocol):
    """What the connections share (plane.py's DataPlane)."""

    loop: asyncio.AbstractEventLoop
    limits: Limits
    serve: Callable[[web.Request], Awaitable[web.StreamResponse]]  # middlewares and handler
    prepare: Prepare
    server: web.Server | None

    def hand_over(
        self, transport: asyncio.BaseTransport, client: str, over_limit: str | None, data: bytes
    ) -> ProxyProtocol: ...


class FastProtocol(BaseProtocol):
    __slots__ = (
        "_body",
        "_body_left",
        "_buffer",
        "_head_started",
        "_plane",
        "_request",
        "_scanned",
        "_task",
        "_task_handler",
        "_timer",
        "client",
        "closing",
        "stall",
    )

    def __init__(self, plane: Plane) -> None:
        super().__init__(plane.loop)
        self._plane = plane
        self._buffer = bytearray()
        self._request: FastRequest | None = None  # the request being served
        # Its body's reader; None once the request was answered without reading all of it
        # (a refusal): the rest is then read and dropped, as aiohttp does, not left unread.
        self._body: StreamReader | None = None
        self._body_left = 0  # bytes of that body still to come
        self._head_started = False  # part of a next request's head has come
        self._scanned = 0  # how far the buffer is known not to hold the end of a head
        self.stall = StallTimer()  # armed while writing is paused
        self._task: asyncio.Task[None] | None = None
        self._task_handler = None  # what aiohttp's Server looks at when a connection ends
        self._timer: asyncio.TimerHandle | None = None
        self.client = "-"
        self.closing = False  # close once the request being served is answered

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        plane = self._plane
        self.client = peer_address(transport)
        over_limit = plane.limits.book.open(self.client, plane.limits.config)
        if over_limit is not None:  # the aiohttp path answers it (503) or closes it
            plane.hand_over(transport, self.client, over_limit, b"")
            return
        super().connection_made(transport)
        assert plane.server is not None
        plane.server.connection_made(self, transport)  # type: ignore[arg-type]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            set_keepalive(sock, plane.limits.config.client_limits.tcp_keepalive)
        # The first head's deadline runs from now, not from its first byte (as on aiohttp).
        self._head_started = True
        self._arm(plane.limits.config.client_limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._body_left:
            data = self._feed_body(data)
            if not data:
                return
        self._buffer += data
        if self._task is None:
            self._next_request()
        elif len(self._buffer) > PIPELINED_BYTES:
            self._pause_transport_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self.stall.disarm()
        self._untrack()
        self._plane.limits.book.close(self.client, False)
        if self._body is not None and self._body_left:
            self._body.set_exception(ConnectionResetError("client disconnected"))
        if self._task is not None:
            self._task.cancel()  # as aiohttp's handler_cancellation: the node's request closes
        super().connection_lost(exc)

    def pause_reading(self) -> None:
        """The body reader's buffer is full (StreamReader's flow control)."""
        self._reading_paused = True
        self._pause_transport_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        self._reading_paused = False
        self._resume_transport_reading()

    def pause_writing(self) -> None:
        """The client is not taking the bytes sent: it is cut if that lasts."""
        super().pause_writing()
        assert self.transport is not None
        limit = self._plane.limits.config.client_limits.write_timeout
        self.stall.arm(self._plane.loop, self.transport, self.client, limit)

    def resume_writing(self) -> None:
        self.stall.disarm()
        super().resume_writing()

    # requests

    def _next_request(self) -> None:
        plane = self._plane
        config = plane.limits.config
        # From where the last search stopped: a head sent a byte at a time costs linear time.
        end = self._buffer.find(HEAD_END, self._scanned)
        if end < 0:
            scanned, self._scanned = self._scanned, max(0, len(self._buffer) - len(HEAD_END) + 1)
            if len(self._buffer) > config.max_header_bytes:
                self._hand_over()  # aiohttp answers the oversized head (431)
            elif self._buffer.find(BARE_LF_END, scanned) >= 0:
                self._hand_over()  # aiohttp answers it at once, not at the header deadline
            elif not self._head_started:  # the header deadline runs from the first byte
                self._head_started = True
                self._arm(config.client_limits.header_timeout)
            return
        self._head_started = False
        self._scanned = 0
        head_bytes = bytes(self._buffer[: end + 4])
        head = read_head(
            head_bytes,
            self,
            plane.loop,
            max_header_bytes=config.max_header_bytes,
            max_fields=MAX_HEADER_FIELDS,
            max_body_bytes=config.max_body_bytes,
        )
        if head is None:
            self._hand_over()
            return
        self._disarm()
        rest = bytes(self._buffer[end + 4 :])
        self._buffer.clear()
        request = FastRequest(
            self,
            head.method,
            head.target,
            head.headers,
            head.content_length,
            head.body,
            self.client,
            plane.prepare,
            StreamWriter(self, plane.loop),
        )
        self._request, self._body = request, head.body
        self._body_left = head.content_length or 0
        if rest and self._body_left:
            rest = self._feed_body(rest)
        if rest:
            self._buffer += rest  # the next request's first bytes (pipelined)
        self._task = plane.loop.create_task(self._serve(request))
        self._task.add_done_callback(self._served)

    def _feed_body(self, data: bytes) -> bytes:
        """Give the request its body bytes; what follows them belongs to the next request."""
        take = self._body_left
        content = self._body
        if len(data) < take:
            self._body_left -= len(data)
            if content is not None:
                content.feed_data(data)
            return b""
        self._body_left = 0
        if content is not None:
            content.feed_data(data[:take] if len(data) > take else data)
            content.feed_eof()
        elif self._task is None:  # the dropped rest is in: the next request may come
            self._arm(self._plane.limits.config.client_limits.idle_timeout)
        return data[take:]

    async def _serve(self, request: FastRequest) -> None:
        plane = self._plane
        try:
            try:
                response = await plane.serve(request)  # type: ignore[arg-type]
                if not response.prepared:
                    await response.prepare(request)  # type: ignore[arg-type]
                    await response.write_eof()
            except asyncio.CancelledError:
                self._close()
                raise
            except ConnectionError:  # the client is gone (a write to it failed)
                self._close()
                return
            except Exception as exc:  # as aiohttp's handle_error: a bug answered 500
                await self._failed(request, exc)
                return
            keep = response.keep_alive and not self.closing
        finally:
            self._task = None
            self._request = self._body = None
        if not keep:
            self._close()
            return
        config = plane.limits.config.client_limits
        # The rest of an unread body must come at the pace a header would.
        self._arm(config.header_timeout if self._body_left else config.idle_timeout)
        if self._buffer:
            self._resume_transport_reading()
            self._next_request()

    def _served(self, task: asyncio.Task[None]) -> None:
        """Nobody awaits a request's task: what it raised (after its answer, where `_serve`
        catches nothing, or in `_failed`) is read here, logged, and the connection ended, since
        its state is unknown (no idle timer may be armed)."""
        if task.cancelled() or (exc := task.exception()) is None:
            return
        log.error("unhandled error on a connection from %s", self.client, exc_info=exc)
        self._close()

    async def _failed(self, request: FastRequest, exc: Exception) -> None:
        log.error(
            "unhandled error answering %s %s", request.method, loggable(request.path), exc_info=exc
        )
        if request.writer.output_size == 0 and self.transport is not None:
            response = error_response(request.path, 500, "internal error in sollol-proxy")
            try:
                await response.prepare(request)  # type: ignore[arg-type]
                await response.write_eof()
            except ConnectionError:
                pass
        self._close()  # after a 500, or when the answer had started: the connection ends

    def _hand_over(self) -> None:
        assert self.transport is not None
        self._resume_transport_reading()  # paused for pipelined bytes: aiohttp reads on
        transport, self.transport = self.transport, None
        self._disarm()
        self.stall.disarm()
        self._untrack()
        data = bytes(self._buffer)
        self._buffer.clear()
        protocol = self._plane.hand_over(transport, self.client, None, data)
        if self._paused:  # an answer of this protocol's is still unsent: the bound goes along
            protocol.pause_writing()

    # shutdown (aiohttp's Server calls these as it does its own connections') and timers

    def close(self) -> None:
        """Stop accepting: close now if no request is being served, else after its answer."""
        self.closing = True
        if self._task is None:
            self._close()

    async def shutdown(self, timeout: float | None) -> None:  # noqa: ASYNC109 - aiohttp's signature
        """The end: the request still served gets `timeout` seconds, then is cancelled."""
        task = self._task
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)
            task.cancel()
        if self.transport is not None:
            self.transport.abort()

    def _untrack(self) -> None:
        server = self._plane.server
        if server is not None:
            server.connection_lost(self)  # type: ignore[arg-type]

    def _close(self) -> None:
        self._disarm()
        if self.transport is not None:
            bound_unsent(self.transport)
            self.transport.close()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self._plane.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._task is None:
            log.debug(
                "closed a connection from %s: idle, or no request headers in time", self.client
            )
            self._close()
