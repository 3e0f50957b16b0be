"""A request the data plane serves, as the proxy's handler sees it.

The handler, the forwarder and the relay are written against aiohttp's `web.Request`; this class
has the part of it they use (and `upstream.Outgoing` names), so that both front-ends run the same
engine. Answers are aiohttp's own response classes, written through aiohttp's `StreamWriter` on
the data plane's connection: status line, headers, framing and the app's `on_response_prepare`
hooks are those of the aiohttp path, byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpVersion11
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

Prepare = Callable[["FastRequest", web.StreamResponse], Awaitable[None]]
_NO_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


class FastRequest:
    __slots__ = (
        "_payload_writer",
        "_prepare",
        "_protocol",
        "_values",
        "content",
        "content_length",
        "headers",
        "method",
        "path",
        "remote",
    )

    version = HttpVersion11
    keep_alive = True
    query = _NO_QUERY

    def __init__(
        self,
        protocol: BaseProtocol,
        method: str,
        target: str,
        headers: CIMultiDictProxy[str],
        content_length: int | None,
        content: StreamReader,
        remote: str,
        prepare: Prepare,
        writer: StreamWriter,
    ) -> None:
        self._protocol = protocol
        self.method = method
        self.path = target  # a hot route's target is a plain path: raw and decoded are equal
        self.headers = headers
        self.content_length = content_length
        self.remote = remote
        self._prepare = prepare
        self._values: dict[Any, Any] = {}
        self.content = content
        self._payload_writer = writer

    @property
    def raw_path(self) -> str:
        return self.path

    @property
    def protocol(self) -> BaseProtocol:
        """Not aiohttp's: the limits middleware leaves the checks of its protocol to the data
        plane's (over-limit connections and oversized heads are handed to aiohttp)."""
        return self._protocol

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._protocol.transport

    @property
    def writer(self) -> StreamWriter:
        return self._payload_writer

    def clone(self, *, headers: Any) -> FastRequest:
        """The same request with other headers (the guard drops the API key's), sharing the
        connection, body and writer; its values are a copy, as aiohttp's clone has."""
        clone = FastRequest(
            self._protocol,
            self.method,
            self.path,
            CIMultiDictProxy(CIMultiDict(headers)),
            self.content_length,
            self.content,
            self.remote,
            self._prepare,
            self._payload_writer,
        )
        clone._values = dict(self._values)
        return clone

    def get(self, key: Any, default: Any = None) -> Any:
        return self._values.get(key, default)

    def __getitem__(self, key: Any) -> Any:
        return self._values[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._values[key] = value

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        await self._prepare(self, response)
