"""Limits against abuse: header size, open connections (body size is enforced where bodies are read).

Every limit answers with an Ollama-shaped error (`errors.error_response`). aiohttp answers the
requests its parser rejects (a header line too long, too many headers, garbage) with its own
plain-text 400 from `RequestHandler.handle_error`, which no hook or signal reaches (aiohttp issue
#3287). The proxy therefore accepts connections with its own subclass of aiohttp's public
`web.RequestHandler`, overriding that one public method; `listen()` creates them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from sollol_proxy.config import Config
from sollol_proxy.wire.errors import error_response

log = logging.getLogger("sollol.limits")

HEADERS_TOO_LARGE = 431  # what Go's net/http (so Ollama) answers beyond MaxHeaderBytes
BUSY = 503
# aiohttp's default; Go has no count limit, but its 1 MiB header budget bounds it in practice.
MAX_HEADER_FIELDS = 128
# A rejected connection that sends nothing is closed after this long (aiohttp's keep-alive timer
# also runs before the first request).
REJECTED_IDLE_S = 2.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ProxyProtocol(web.RequestHandler):
    """One client connection: aiohttp's, with Ollama-shaped answers to unparseable requests."""

    __slots__ = ("over_limit",)

    def __init__(self, manager: web.Server, *, over_limit: bool, **kwargs: object) -> None:
        super().__init__(manager, **kwargs)  # type: ignore[arg-type]
        # Opened while `limits.max_connections` were already open: its requests get a 503.
        self.over_limit = over_limit

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
            log.info("rejected a request from %s: %d %s", client, status, text)
        else:
            log.error("unhandled error answering %s %s", request.method, request.path, exc_info=exc)
        # A request the parser rejected has no path: it is answered in the /api shape.
        response = error_response(request.path, status, text)
        response.force_close()
        return response


def header_bytes(request: web.BaseRequest) -> int:
    """The request line plus the header lines, as sent (the CRLFs counted)."""
    line = len(request.method) + len(request.raw_path) + len("  HTTP/1.1\r\n")
    return line + sum(len(name) + len(value) + 4 for name, value in request.raw_headers)


class Limits:
    def __init__(self, config: Config) -> None:
        self._config = config

    def reconfigure(self, config: Config) -> None:
        """New limits apply to connections opened from now on (the parser's) and to new requests."""
        self._config = config

    def protocol_factory(
        self, server: web.Server, loop: asyncio.AbstractEventLoop, **kwargs: object
    ) -> Callable[[], ProxyProtocol]:
        """What the listening socket calls for each accepted connection."""

        def accept() -> ProxyProtocol:
            config = self._config
            over = len(server.connections) >= config.max_connections
            options = {
                **kwargs,
                # A single line may use the whole budget; the sum is checked by `middleware`.
                "max_line_size": config.max_header_bytes,
                "max_field_size": config.max_header_bytes,
                "max_headers": MAX_HEADER_FIELDS,
            }
            if over:
                # Answer and close: no lingering read of a body the proxy will not use.
                options.update(lingering_time=0, keepalive_timeout=REJECTED_IDLE_S)
            return ProxyProtocol(server, loop=loop, over_limit=over, **options)

        return accept

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        config = self._config
        protocol = request.protocol
        if isinstance(protocol, ProxyProtocol) and protocol.over_limit:
            log.warning(
                "rejected a connection from %s: %d connections open (limits.max_connections)",
                request.remote or "-",
                config.max_connections,
            )
            response = error_response(
                request.path,
                BUSY,
                f"sollol-proxy has too many open connections (limit {config.max_connections});"
                " try again later",
            )
            response.force_close()
            return response
        if header_bytes(request) > config.max_header_bytes:
            response = error_response(
                request.path,
                HEADERS_TOO_LARGE,
                f"request header too large (limit {config.max_header_bytes} bytes)",
            )
            response.force_close()
            return response
        return await handler(request)
