"""CORS for the answers the proxy makes itself, as Ollama would make them (reference 1.6).

The fleet views, `/sollol/*` and the errors the proxy produces get the proxy's own verdict
(`cors.origins`): a disallowed Origin gets Ollama's `403` with an empty body, an allowed one gets
`Access-Control-Allow-Origin` and `Vary: Origin`, and a preflight on a route the proxy answers
gets Ollama's `204`. A node's answer relayed to the client keeps the node's own CORS headers
(the node saw the client's Origin and decided by its `OLLAMA_ORIGINS`): the forwarder marks it
with `FROM_NODE`. Independent of any other middleware; it runs first, as CORS runs first in Ollama.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from sollol_proxy.config import Config
from sollol_proxy.wire.cors import CorsPolicy, Verdict
from sollol_proxy.wire.headers import NODE_HEADER
from sollol_proxy.wire.routes import FLEET_VIEWS, Kind, classify, gin_allow, routed_path

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Set on a response whose headers are a node's own: its CORS headers are the node's.
FROM_NODE = web.ResponseKey("sollol_from_node", bool)
_ADD = web.RequestKey("sollol_cors_headers", list[tuple[str, str]])
# Set on a CORS preflight passed on to a node: in Ollama CORS answers it before the Host check
# (reference 1.6), so the Host check's own `204` for OPTIONS must not answer it instead.
PREFLIGHT = web.RequestKey("sollol_cors_preflight", bool)


def answered_here(request: web.Request) -> bool:
    """Does the proxy answer this path itself (so its CORS verdict is the only one)? A
    preflight is about the request that follows it: what would answer that path."""
    method = "GET" if request.method == "OPTIONS" else request.method
    kind = classify(method, routed_path(request.path, request.raw_path))[0].kind
    if kind in (Kind.ROOT, Kind.SOLLOL):
        return True
    return kind in FLEET_VIEWS and not request.headers.get(NODE_HEADER)


def _empty(status: int) -> web.Response:
    return web.Response(status=status)  # AbortWithStatus: no body, no Content-Type


class Cors:
    def __init__(self, config: Config) -> None:
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.policy = CorsPolicy.from_origins(config.cors_origins)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        verdict = self.policy.verdict(origin, request.headers.get("Host", ""))
        if verdict is Verdict.NOT_CORS or origin is None:
            return await handler(request)
        forbidden = verdict is Verdict.FORBIDDEN
        if answered_here(request) and (forbidden or request.method == "OPTIONS"):
            return self._answer(request, origin, forbidden)
        if request.method == "OPTIONS":
            request[PREFLIGHT] = True
        if not forbidden:
            request[_ADD] = self.policy.headers(origin, preflight=False)
        response = await handler(request)
        if forbidden and not response.get(FROM_NODE) and not response.prepared:
            return _empty(403)  # an error the proxy made on a forwarded route: Ollama's 403
        return response

    def _answer(self, request: web.Request, origin: str, forbidden: bool) -> web.Response:
        """Ollama's 403 for a forbidden Origin, or its 204 for an allowed preflight."""
        response = _empty(403 if forbidden else 204)
        allow = gin_allow(request.method, request.path)
        if allow is not None:
            response.headers["Allow"] = allow  # set by gin's 405 before CORS ran
        if not forbidden:
            response.headers.extend(self.policy.headers(origin, preflight=True))
        return response

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """An allowed Origin's headers, on every answer the proxy made (streams included)."""
        if not response.get(FROM_NODE):
            response.headers.extend(request.get(_ADD, ()))
