"""The data plane: what its connections share, and how a connection goes to aiohttp.

`listen.engine: fast` (the default) accepts every connection with `FastProtocol`; `aiohttp`
accepts them with aiohttp's protocol directly, as before the data plane existed. The engine
behind both is the same handler (handlers.py and everything it calls); this plane only replaces
aiohttp's request parsing, its middleware chain and its router for the requests it serves, so
it applies here what those middlewares check: the Host check, the drain's tracking, the limits
(protocol.py). Requests with an API key to check, a CORS Origin or anything else unusual are
handed to aiohttp (head.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDictProxy

from sollol_proxy.dataplane.protocol import FastProtocol
from sollol_proxy.dataplane.request import Prepare
from sollol_proxy.guard.guard import Guard
from sollol_proxy.guard.hosts import HostCheck
from sollol_proxy.lifecycle.drain import Drain
from sollol_proxy.lifecycle.limits import Limits, ProxyProtocol

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DataPlane:
    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        drain: Drain,
        hosts: HostCheck,
        guard: Guard,
        prepare: Prepare,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.drain = drain
        self._hosts = hosts
        self._guard = guard
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

    def serves(self, headers: CIMultiDictProxy[str]) -> bool:
        """Whether the checks of the aiohttp path's middlewares let this plane serve the
        request: a Host the Host check would refuse, or an API key to check, go to aiohttp
        (which answers them as it always has)."""
        if self._guard.enabled:
            return False
        return not self._hosts.active or self._hosts.allowed(headers.get("Host", ""))

    def hand_over(
        self, transport: asyncio.BaseTransport, client: str, over_limit: str | None, data: bytes
    ) -> None:
        """The connection goes to aiohttp's protocol, with what it has sent of its request."""
        assert self._fallback is not None
        protocol = self._fallback()
        transport.set_protocol(protocol)
        protocol.adopt(transport, client, over_limit)
        if data:
            protocol.data_received(data)
