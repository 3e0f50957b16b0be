"""SimulatedNode: one fake Ollama server on a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

from aiohttp import web
from multidict import CIMultiDict

import sollol_proxy.simulator.framing as framing
import sollol_proxy.simulator.routing as routing
from sollol_proxy.simulator.core import NodeCore
from sollol_proxy.simulator.gotypes import ApiError
from sollol_proxy.simulator.wire import (
    STOPPING,
    TEXT,
    RecordedRequest,
    abort_connection,
    error_response,
    respond,
)
from sollol_proxy.wire.cors import OLLAMA_DEFAULT, CorsPolicy, Verdict
from sollol_proxy.wire.routes import go_clean

_RECORDED = web.RequestKey("sim_recorded", bool)
_CORS_HEADERS = web.RequestKey("sim_cors_headers", list[tuple[str, str]])
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimulatedNode(NodeCore):
    """A NodeCore listening on a real socket (``start``/``stop`` or ``async with``)."""

    port = 0
    host = "127.0.0.1"
    _runner: web.AppRunner | None = None
    _server: asyncio.Server | None = None
    _stopping: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        # Like envconfig.ConnectableHost: a wildcard listener is reached through loopback.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Listen on host:port (port 0 picks a free one) and return the node's URL.
        The Host-header check follows ``bind_host``, not the listening address."""
        self.host = host

        @web.middleware
        async def record(request: web.Request, handler: _Handler) -> web.StreamResponse:
            return await self._record_middleware(request, handler)

        # Ollama has no request size limit; aiohttp would answer 413 above 1 MiB.
        app = web.Application(middlewares=[record], client_max_size=2**31)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_response_prepare.append(self._strip_server_header)
        self._stopping = app[STOPPING] = asyncio.Event()
        # handler_cancellation: a client disconnect cancels the handler, as a cancelled
        # request context does in Go (§1.4). auto_decompress=False: gin never decodes a
        # request's Content-Encoding, so a gzip body is invalid JSON to Ollama.
        self._runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=0.5,
            auto_decompress=False,
        )
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, host or None, port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    def _protocol(self) -> asyncio.BaseProtocol:
        if self.faults.refuse:
            return framing.RefuseProtocol()
        assert self._runner is not None and self._runner.server is not None
        return self._runner.server()

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()  # stalled streams drop their connections and end
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        for runner in self._sched.loaded():
            if runner.timer is not None:
                runner.timer.cancel()

    async def restart(self, *, num_parallel: int | None = None) -> None:
        """Restart the node as ``ollama serve`` restarts with another OLLAMA_NUM_PARALLEL:
        its connections drop (in-flight requests fail), every runner and its KV cache are
        gone, and it listens again at the same address. Counters and recordings are kept.
        ``num_parallel=None`` keeps the current value."""
        listening = self._server is not None
        if listening:
            await self.stop()
        self._sched.restart(self.num_parallel if num_parallel is None else num_parallel)
        if listening:
            await self.start(self.port, self.host)

    async def __aenter__(self) -> SimulatedNode:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ HTTP plumbing

    # The node's OLLAMA_ORIGINS (reference 1.6): e.g. `node.cors = CorsPolicy.from_origins(...)`.
    cors: CorsPolicy = OLLAMA_DEFAULT

    @staticmethod
    async def _strip_server_header(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.pop("Server", None)  # Go's net/http sends none
        # gin's CORS middleware wrote these before the handler ran, streams included.
        response.headers.extend(request.get(_CORS_HEADERS, ()))

    def record_response(
        self, request: web.Request, resp: web.StreamResponse | None, complete: bool
    ) -> None:
        if request.get(_RECORDED):
            return
        request[_RECORDED] = True
        self.responses.append(framing.recorded(request, resp, complete))

    async def _record_middleware(
        self,
        request: web.Request,
        handler: _Handler,
    ) -> web.StreamResponse:
        blob_upload = request.method == "POST" and request.path.startswith("/api/blobs/")
        body = b"" if blob_upload else await request.read()  # blob bytes are not kept
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                request.query_string,
                CIMultiDict(request.headers),
                body,
            )
        )
        resp: web.StreamResponse | None = None
        try:
            resp = await framing.send_response(request, await handler(request), self.faults)
            return resp
        finally:
            self.record_response(request, resp, resp is not None)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if self.faults.refuse:  # a dead node also drops the keep-alive connections it had
            await abort_connection(request)
        if self.faults.reset_before_headers:
            if request.method == "POST" and request.path.startswith("/api/blobs/"):
                await request.read()
            await abort_connection(request)
        path = request.path
        clean = go_clean(path)
        if clean != path:
            return routing.redirect(request, clean, 301)
        table = routing.lookup(path)
        entry = table.get(request.method)
        if entry is None:
            target = routing.trailing_slash_target(path, request.method)
            if target is not None:
                return routing.redirect(request, target, 301 if request.method == "GET" else 307)
        allow = [m for m in routing.METHOD_ORDER if m in table] if entry is None else []
        # gin sets a 405's Allow before its middleware runs: CORS answers keep it.
        allow_header = {"Allow": ", ".join(allow)} if allow else {}
        host = request.headers.get("Host", "")
        origin = request.headers.get("Origin")
        verdict = self.cors.verdict(origin, host)
        if verdict is Verdict.FORBIDDEN:
            return respond(403, headers=allow_header)
        if verdict is Verdict.ALLOWED:
            assert origin is not None
            preflight = request.method == "OPTIONS"
            request[_CORS_HEADERS] = self.cors.headers(origin, preflight=preflight)
            if preflight:
                return respond(204, headers=allow_header)
        allowed_as = routing.host_check(host, self.bind_host)
        if allowed_as is None:
            return respond(403, headers=allow_header)
        if entry is None:
            if request.method == "OPTIONS" and allowed_as == "name":
                return respond(204, headers=allow_header)
            if allow:
                return respond(405, b"405 method not allowed", TEXT, allow_header)
            return respond(404, b"404 page not found", TEXT)
        handler, params = entry
        request.match_info.update(params)
        try:
            return await handler(self, request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.content_type)
