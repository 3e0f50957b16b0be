"""SimulatedNode: one fake Ollama server on a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType

from aiohttp import web
from multidict import CIMultiDict

from sollol_proxy.simulator import framing, routing
from sollol_proxy.simulator.gotypes import (
    ApiError,
    format_local,
    format_utc,
    now_ns,
    parse_go_time,
    parse_keep_alive,
)
from sollol_proxy.simulator.inference import DEFAULT_NUM_CTX
from sollol_proxy.simulator.models import SimModel, default_catalog, parse_name
from sollol_proxy.simulator.scheduler import NodeStats, Scheduler
from sollol_proxy.simulator.wire import (
    STOPPING,
    TEXT,
    Faults,
    RecordedRequest,
    RecordedResponse,
    abort_connection,
    error_response,
    respond,
)
from sollol_proxy.wire.cors import OLLAMA_DEFAULT, CorsPolicy, Verdict

DETERMINISTIC_CREATED_AT = "2026-01-01T00:00:00Z"
_RECORDED = web.RequestKey("sim_recorded", bool)
_CORS_HEADERS = web.RequestKey("sim_cors_headers", list[tuple[str, str]])
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimulatedNode:
    def __init__(
        self,
        name: str = "node",
        models: Iterable[str | SimModel] = (),
        catalog: dict[str, SimModel] | None = None,
        version: str = "0.33.0-rc2",
        num_parallel: int = 1,
        max_loaded_models: int = 3,
        vram_bytes: int = 24 * 2**30,
        load_delay: float = 0.0,
        token_delay: float = 0.0,
        prompt_tokens_per_s: float | None = None,
        speed: float = 1.0,
        load_bytes_per_s: float | None = None,
        keep_alive: float | str = 300.0,
        deterministic: bool = False,
        bind_host: str = "127.0.0.1",
        default_num_ctx: int = DEFAULT_NUM_CTX,
    ) -> None:
        self.name = name
        self.catalog = dict(catalog) if catalog is not None else default_catalog()
        self._catalog_keys = {m.key: m for m in self.catalog.values()}
        self.version = version
        self.token_delay = token_delay
        self.prompt_tokens_per_s = prompt_tokens_per_s
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed  # divides prefill and decode time: a faster GPU
        self.deterministic = deterministic
        self.bind_host = bind_host
        self.default_num_ctx = default_num_ctx
        default_keep = parse_keep_alive(keep_alive)
        self._sched = Scheduler(
            num_parallel=num_parallel,
            max_loaded_models=max_loaded_models,
            vram_bytes=vram_bytes,
            load_delay=load_delay,
            default_keep_alive=300.0 if default_keep is None else default_keep,
            load_bytes_per_s=load_bytes_per_s,
        )
        self._models: dict[str, SimModel] = {}
        for m in models:
            self.add_model(
                m if isinstance(m, SimModel) else (self.catalog_lookup(m) or SimModel(m))
            )
        self.blobs: dict[str, int] = {}  # digest -> size; bytes are never kept
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self.responses: list[RecordedResponse] = []
        self.cancelled = 0
        self.port = 0
        self.host = "127.0.0.1"
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._stopping = asyncio.Event()

    # ------------------------------------------------------------------ model store

    def lookup(self, name: str) -> SimModel | None:
        parsed = parse_name(name)
        return self._models.get(parsed.key) if parsed else None

    def catalog_lookup(self, name: str) -> SimModel | None:
        parsed = parse_name(name)
        return self._catalog_keys.get(parsed.key) if parsed else None

    def add_model(self, model: SimModel) -> None:
        self._models[model.key] = model

    def remove_model(self, name: str) -> bool:
        parsed = parse_name(name)
        return parsed is not None and self._models.pop(parsed.key, None) is not None

    def sorted_models(self) -> list[SimModel]:
        """Newest modified_at first, like sortListModelResponses."""
        return sorted(self._models.values(), key=lambda m: (-parse_go_time(m.modified_at), m.name))

    def has_model(self, name: str) -> bool:
        return self.lookup(name) is not None

    def model_names(self) -> list[str]:
        return [m.name for m in self.sorted_models()]

    def loaded_models(self) -> list[str]:
        return [r.model.name for r in self._sched.loaded()]

    def in_flight(self) -> int:
        return self._sched.in_flight

    @property
    def stats(self) -> NodeStats:
        return self._sched.stats

    def created_at(self) -> str:
        return DETERMINISTIC_CREATED_AT if self.deterministic else format_utc(now_ns())

    def now_local(self) -> str:
        return format_local(now_ns())

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
        clean = routing.clean_path(path)
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
                return respond(204)
            if allow:
                return respond(405, b"405 method not allowed", TEXT, allow_header)
            return respond(404, b"404 page not found", TEXT)
        handler, params = entry
        request.match_info.update(params)
        try:
            return await handler(self, request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.content_type)
