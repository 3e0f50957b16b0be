"""Limits against abuse: header size and time, open connections in all and per client address,
idle keep-alive connections, request targets (body size and speed are enforced where bodies are
read, a stalled reader where answers are written).

Every limit answers with an Ollama-shaped error (`errors.error_response`) when there is a request
to answer; a connection that never sends one is closed. aiohttp answers the requests its parser
rejects (a header line too long, too many headers, garbage) with its own plain-text 400 from
`RequestHandler.handle_error`, which no hook or signal reaches (aiohttp issue #3287). The proxy
therefore accepts connections with its own subclass of aiohttp's public `web.RequestHandler`,
overriding that method and the asyncio protocol callbacks; `protocol_factory()` creates them.

aiohttp's keep-alive timer also runs before a connection's first request, but it is one timer
for two things: a request whose headers trickle in keeps it from firing only if it is long. The
proxy keeps its own header timer (`limits.header_timeout`), armed when a connection opens and
when the first byte of each next request arrives, disarmed when the request starts. A client that
stops reading is cut after `limits.write_timeout` (stall.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_urldispatcher import _default_expect_handler

from sollol_proxy.config import Config
from sollol_proxy.lifecycle.connections import ConnectionBook
from sollol_proxy.lifecycle.sockets import peer_address, set_keepalive
from sollol_proxy.lifecycle.stall import StallTimer, bound_unsent
from sollol_proxy.wire.body_budget import BodyBudget
from sollol_proxy.wire.errors import error_response
from sollol_proxy.wire.headers import REQUEST_ID_HEADER, new_request_id
from sollol_proxy.wire.logsafe import loggable
from sollol_proxy.wire.routes import Kind, classify, routed_path

log = logging.getLogger("sollol.limits")

HEADERS_TOO_LARGE = 431  # what Go's net/http (so Ollama) answers beyond MaxHeaderBytes
BUSY = 503
PAYLOAD_TOO_LARGE = 413  # a request body over limits.max_body_bytes (wire/peek.read_body)
# aiohttp's default; Go has no count limit, but its 1 MiB header budget bounds it in practice.
MAX_HEADER_FIELDS = 128
# A rejected connection that sends nothing is closed after this long.
REJECTED_IDLE_S = 2.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Unbranded(web.Response):
    """An answer prepared outside the app (to a request the parser refused, or a bug): the app's
    hook that drops aiohttp's Server header never runs for it, and Ollama sends none (1.1)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall("Server", None)


class ProxyProtocol(web.RequestHandler):
    """One client connection: aiohttp's, with Ollama-shaped answers to unparseable requests,
    a header deadline, a per-client cap, TCP keep-alive and a write bound."""

    __slots__ = ("_busy", "_head_timer", "_limits", "_opened", "client", "over_limit", "stall")

    def __init__(self, manager: web.Server, *, limits: Limits, **kwargs: object) -> None:
        super().__init__(manager, **kwargs)  # type: ignore[arg-type]
        self._limits = limits
        self._head_timer: asyncio.TimerHandle | None = None
        self.stall = StallTimer()  # armed while writing is paused
        self._busy = False
        self._opened = False
        self.client = "-"
        # The limit this connection was opened beyond (its requests get a 503), or None.
        self.over_limit: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = peer_address(transport)
        self.adopt(transport, client, self._limits.book.open(client, self._limits.config))

    def adopt(self, transport: asyncio.BaseTransport, client: str, over_limit: str | None) -> None:
        """Serve a connection already counted in the book (by the data plane, which hands
        over the connections whose requests it does not serve itself)."""
        config = self._limits.config
        self.client, self.over_limit = client, over_limit
        self._opened = True
        if self.over_limit is not None:
            self.skip_lingering()  # its 503 closes the connection
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            set_keepalive(sock, config.client_limits.tcp_keepalive)
        if self.over_limit is not None and self._limits.book.refused > config.max_connections:
            self.force_close()  # refused connections cost a file descriptor too: no answer
            return
        wait = config.client_limits.header_timeout
        self._arm(min(wait, REJECTED_IDLE_S) if self.over_limit else wait)

    def data_received(self, data: bytes) -> None:
        if data and not self._busy and self._head_timer is None:
            self._arm(self._limits.config.client_limits.header_timeout)  # a next request begins
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self.stall.disarm()
        if self._opened:
            self._opened = False
            self._limits.book.close(self.client, self.over_limit is not None)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client is not taking the bytes sent: it is cut if that lasts."""
        super().pause_writing()
        if self.transport is not None:
            limit = self._limits.config.client_limits.write_timeout
            self.stall.arm(self._loop, self.transport, self.client, limit)

    def resume_writing(self) -> None:
        self.stall.disarm()
        super().resume_writing()

    def force_close(self) -> None:
        if self.transport is not None:
            bound_unsent(self.transport)  # before aiohttp lets go of the transport
        super().force_close()

    async def start(self) -> None:
        try:
            await super().start()
        finally:  # aiohttp has closed the transport, which waits for the unsent bytes
            if self.transport is not None:
                bound_unsent(self.transport)

    def skip_lingering(self) -> None:
        """No lingering read of the rest of a body the proxy will not use, after an answer
        that closes the connection. (aiohttp takes this only as a constructor argument, and
        whether it applies is known only later.)"""
        self._lingering_time = 0.0

    def request_started(self) -> None:
        self._busy = True
        self._disarm()

    def request_ended(self) -> None:
        self._busy = False

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._head_timer = asyncio.get_running_loop().call_later(seconds, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._busy:
            log.debug("closed a connection from %s: no request headers in time", self.client)
            self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As aiohttp does: the answer has started, the connection is closed instead.
            raise ConnectionError("response already started, cannot send an error")
        client = request.remote or "-"
        if isinstance(exc, LineTooLong):
            status = HEADERS_TOO_LARGE
            text = f"request header too large (limit {self.max_field_size} bytes)"
        elif isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc.message):
            status = HEADERS_TOO_LARGE
            text = f"too many request header fields (limit {self.max_headers})"
        elif status == 400:
            text = f"bad request: {getattr(exc, 'message', None) or message or 'unparseable'}"
        else:  # an exception escaped the handler (500) or a timeout did (504): a bug
            text = "internal error in sollol-proxy"
        if status < 500:
            log.info("rejected a request from %s: %d %s", client, status, loggable(text))
        else:
            log.error(
                "unhandled error answering %s %s",
                request.method,
                loggable(request.path),
                exc_info=exc,
            )
        # A request the parser rejected has no path: it is answered in the /api shape.
        shaped = error_response(request.path, status, text)
        response = _Unbranded(status=status, body=shaped.body, headers=shaped.headers)
        response.force_close()
        return response


def _client(request: web.BaseRequest) -> str:
    """The address a request's body is counted under, as the handler counts it."""
    return peer_address(request.transport) if request.transport is not None else "-"


def header_bytes(request: web.BaseRequest) -> int:
    """The request line plus the header lines, as sent (the CRLFs counted)."""
    line = len(request.method) + len(request.raw_path) + len("  HTTP/1.1\r\n")
    return line + sum(len(name) + len(value) + 4 for name, value in request.raw_headers)


def _closing(path: str, status: int, message: str) -> web.Response:
    response = error_response(path, status, message)
    response.headers[REQUEST_ID_HEADER] = new_request_id()
    response.force_close()
    return response


class Limits:
    def __init__(self, config: Config, bodies: BodyBudget) -> None:
        self.config = config
        self.book = ConnectionBook()
        self._bodies = bodies

    def reconfigure(self, config: Config) -> None:
        """New limits apply to connections opened from now on (the parser's) and to new requests."""
        self.config = config

    def protocol_factory(
        self, server: web.Server, loop: asyncio.AbstractEventLoop, **kwargs: object
    ) -> Callable[[], ProxyProtocol]:
        """What the listening socket calls for each accepted connection."""

        def accept() -> ProxyProtocol:
            config = self.config
            options = {
                **kwargs,
                # A single line may use the whole budget; the sum is checked by `middleware`.
                "max_line_size": config.max_header_bytes,
                "max_field_size": config.max_header_bytes,
                "max_headers": MAX_HEADER_FIELDS,
                "keepalive_timeout": config.client_limits.idle_timeout,
                "tcp_keepalive": False,  # set by the protocol, with the configured timing
            }
            return ProxyProtocol(server, limits=self, loop=loop, **options)

        return accept

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        config = self.config
        protocol = request.protocol
        if not isinstance(protocol, ProxyProtocol):
            return await handler(request)
        protocol.request_started()
        try:
            return await self._checked(request, handler, protocol, config)
        finally:
            protocol.request_ended()

    async def _checked(
        self, request: web.Request, handler: Handler, protocol: ProxyProtocol, config: Config
    ) -> web.StreamResponse:
        if protocol.over_limit is not None:
            log.warning("rejected a connection from %s: %s", protocol.client, protocol.over_limit)
            # Answer and close: no lingering read of a body the proxy will not use.
            return _closing(
                request.path, BUSY, f"sollol-proxy has {protocol.over_limit}; try again later"
            )
        if request.method == "CONNECT" or not request.raw_path.startswith("/"):
            # Absolute-form (`GET http://host/...`) and CONNECT: the proxy is not a forward proxy.
            return _closing(
                "/",
                400,
                "bad request: the request target must be a path (sollol-proxy is not a"
                " forward proxy)",
            )
        if header_bytes(request) > config.max_header_bytes:
            return _closing(
                request.path,
                HEADERS_TOO_LARGE,
                f"request header too large (limit {config.max_header_bytes} bytes)",
            )
        response = await handler(request)
        if not response.prepared and not request.content.is_eof():  # the proxy's own answer
            if response.status == PAYLOAD_TOO_LARGE:
                # Refused by its declared size: reading the rest would take in what was refused.
                response.force_close()
            if response.keep_alive is False:
                # It closes the connection (a body too large, too slow, or over the body budget):
                # aiohttp's lingering read of the rest of the body would serve nobody.
                protocol.skip_lingering()
        return response

    async def expect(self, request: web.Request) -> None:
        """The catch-all route's answer to `Expect: 100-continue`: aiohttp's, except that a body
        the handler will refuse by its declared length is not invited: over the body limit
        (413) or over what the body budget has room for now (503); the handler answers and
        closes the connection instead."""
        length = request.content_length
        if length is not None:
            route, _ = classify(request.method, routed_path(request.path, request.raw_path))
            held = route.kind is not Kind.BLOB  # uploads are streamed, never held: no limit
            too_large = length > self.config.max_body_bytes
            if held and (too_large or not self._bodies.fits(_client(request), length)):
                return
        await _default_expect_handler(request)
