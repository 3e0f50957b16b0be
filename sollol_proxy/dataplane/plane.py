"""The data plane: what its connections share, and how a connection goes to aiohttp.

`listen.engine: fast` (the default) accepts every connection with `FastProtocol`; `aiohttp`
accepts them with aiohttp's protocol directly, as before the data plane existed. The engine
behind both is the same: the app's middlewares (CORS, drain, limits, Host check, API keys) and
handler, called here in the same order as aiohttp calls them. The plane only replaces aiohttp's
request parsing, request objects and router, for the requests it serves (head.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from sollol_proxy.dataplane.protocol import FastProtocol
from sollol_proxy.dataplane.request import Prepare
from sollol_proxy.lifecycle.limits import Limits, ProxyProtocol

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


class DataPlane:
    def __init__(
        self,
        handler: Handler,
        middlewares: Sequence[Middleware],
        limits: Limits,
        prepare: Prepare,
    ) -> None:
        for middleware in reversed(middlewares):  # the first is outermost, as in aiohttp
            handler = functools.partial(middleware, handler=handler)
        self.serve = handler
        self.limits = limits
        self.prepare = prepare
        self.loop = asyncio.get_running_loop()
        self._fallback: Callable[[], ProxyProtocol] | None = None
        self.server: web.Server | None = None

    def protocol_factory(
        self, server: web.Server, fallback: Callable[[], ProxyProtocol]
    ) -> Callable[[], FastProtocol]:
        """What the listening socket calls for each connection. The connections are tracked by
        aiohttp's `server`, which closes them on shutdown with its own; `fallback` makes the
        aiohttp protocol a connection is handed to."""
        self.server, self._fallback = server, fallback
        return lambda: FastProtocol(self)

    def hand_over(
        self, transport: asyncio.BaseTransport, client: str, over_limit: str | None, data: bytes
    ) -> ProxyProtocol:
        """The connection goes to aiohttp's protocol, with what it has sent of its request."""
        assert self._fallback is not None
        protocol = self._fallback()
        transport.set_protocol(protocol)
        protocol.adopt(transport, client, over_limit)
        if data:
            protocol.data_received(data)
        return protocol
