"""A lean client for the requests relayed to the nodes: keep-alive connections per node, each
running the proxy's own node protocol (nodewire.py: the answer's head and framing, its body
read or pushed as it arrives).

`ClientSession.request` builds a `ClientRequest`, a `ClientResponse`, a yarl URL, a connector
key, traces and timers for every request: about a tenth of the proxy's CPU per small request.
The forwarder's requests need none of it: their headers are already computed (wire/headers.py),
their body is bytes, they never follow redirects nor decompress. Here a request is its head and
body written to a pooled connection, and its answer is the head and body the node protocol
reads, with the errors aiohttp raises for the same faults (a node that disconnects, a body cut
off). Streamed uploads and HEAD still go through the session (upstream.py).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from multidict import CIMultiDictProxy

from sollol_proxy.forward.nodebody import NodeBody
from sollol_proxy.forward.nodewire import NodeProtocol
from sollol_proxy.lifecycle.sockets import set_keepalive

# aiohttp's connector closes a pooled connection idle for this long; so does the pool.
KEEPALIVE_S = 15.0
# A request body larger than this is written in slices with backpressure (as upstream.py does).
WRITE_SLICE = 256 * 1024
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class ConnectFailed(Exception):
    """No connection to the node (the reason as `describe_error` words aiohttp's)."""


@dataclass(frozen=True, slots=True)
class _Origin:
    host: str
    port: int
    tls: bool


class PooledResponse:
    """A node's answer on a pooled connection: what the relay uses of `aiohttp.ClientResponse`."""

    __slots__ = ("_connection", "_pool", "content", "headers", "reason", "status")

    def __init__(
        self,
        pool: NodePool,
        connection: _Connection,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content: NodeBody,
    ) -> None:
        self._pool, self._connection = pool, connection
        self.status, self.reason, self.headers, self.content = status, reason, headers, content

    def release(self) -> None:
        """The whole answer was read: the connection goes back to the pool if it can."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection, self.content.is_eof())

    def close(self) -> None:
        """The answer is abandoned: its connection closes (Ollama then stops the generation)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.protocol.close()


@dataclass(slots=True)
class _Connection:
    origin: _Origin
    protocol: NodeProtocol
    idle_since: float = 0.0


class NodePool:
    def __init__(self, connect_timeout: float | None, tcp_keepalive: float) -> None:
        self._connect_timeout = connect_timeout
        self._tcp_keepalive = tcp_keepalive
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._origins: dict[str, tuple[_Origin, str]] = {}  # node URL -> origin, base path
        self._ssl: ssl.SSLContext | None = None

    async def request(
        self, method: str, url: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> PooledResponse:
        """Send `method` `path` (as the client wrote it, after the node URL's own base path) and
        read the answer's head; raises ConnectFailed, or aiohttp's errors once connected."""
        origin, base = self._origin(url)
        connection = self._take(origin) or await self._connect(origin)
        protocol = connection.protocol
        lines = [f"{method} {base}{path} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method not in _NO_BODY_METHODS:
            lines.append(f"Content-Length: {len(body) if body else 0}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        answer = protocol.expect()
        try:
            await self._write(protocol, head, body or b"")
            status, reason, fields, content = await answer
        except BaseException:
            protocol.close()
            if not answer.done():
                answer.cancel()
            elif not answer.cancelled():
                answer.exception()  # retrieved: the error raised is the write's
            raise
        return PooledResponse(self, connection, status, reason, fields, content)

    async def _write(self, protocol: NodeProtocol, head: bytes, body: bytes) -> None:
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection to the node closed")
        if len(body) <= WRITE_SLICE:
            transport.write(head + body)
            return
        transport.write(head)
        view = memoryview(body)
        for start in range(0, len(body), WRITE_SLICE):
            await protocol.drain()
            transport.write(view[start : start + WRITE_SLICE])

    def release(self, connection: _Connection, complete: bool) -> None:
        protocol = connection.protocol
        if not complete or protocol.should_close or not protocol.is_connected():
            protocol.close()
            return
        # Read while idle, so that a node closing it is seen before the next request takes it
        # (an answer pushed to a slow client may end with the node's socket paused).
        protocol.resume()
        now = time.monotonic()
        connection.idle_since = now
        idle = self._idle.setdefault(connection.origin, deque())
        idle.append(connection)
        while idle and now - idle[0].idle_since > KEEPALIVE_S:
            idle.popleft().protocol.close()

    async def run(self) -> None:
        """Close the connections idle for longer than KEEPALIVE_S (a node that stopped getting
        requests, or left the fleet, keeps no sockets from the proxy)."""
        while True:
            await asyncio.sleep(KEEPALIVE_S / 3)
            now = time.monotonic()
            for idle in self._idle.values():
                while idle and now - idle[0].idle_since > KEEPALIVE_S:
                    idle.popleft().protocol.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.protocol.close()
        self._idle.clear()

    def _take(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if now - connection.idle_since <= KEEPALIVE_S and connection.protocol.is_connected():
                return connection
            connection.protocol.close()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = self._context() if origin.tls else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, protocol = await loop.create_connection(
                    lambda: NodeProtocol(loop), origin.host, origin.port, ssl=context
                )
        except TimeoutError:
            raise ConnectFailed("cannot connect (timed out)") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect ({exc.strerror or exc})") from exc
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            set_keepalive(sock, self._tcp_keepalive)
        return _Connection(origin, protocol)

    def _origin(self, url: str) -> tuple[_Origin, str]:
        known = self._origins.get(url)
        if known is None:
            parts = urlsplit(url)
            tls = parts.scheme == "https"
            port = parts.port or (443 if tls else 80)
            # The path goes out as node URL + the client's raw path, as upstream.py builds it.
            known = (_Origin(parts.hostname or "", port, tls), parts.path)
            self._origins[url] = known
        return known

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl
