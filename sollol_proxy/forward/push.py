"""Relaying a streamed answer in the callback that reads it: node socket to client socket.

Awaited, each chunk of a stream costs a future, a wake-up of the relaying task and a pass
through aiohttp's writer on top of the two socket calls. Pushed, the node protocol's
`data_received` (nodewire.py) hands the read's body bytes to `Pusher`, which writes them to the
client's transport at once, framed as aiohttp's writer frames a write (one chunk per read when
the answer is chunked, the bytes as they are when it is sized): the bytes, their order and
their grouping are those of the awaited relay, and the relaying task wakes only at the end, when
the body breaks, or when the client stops reading.

Backpressure: once the client's transport is over its high-water mark, the node's socket stops
being read and the task waits for the client to drain (the connection's write bound, stall.py,
bounds that wait; the idle watchdog is paused meanwhile: the silence is the client's). A client
gone is seen here or by the connection, which cancels the task; either way the node's request
is closed.
"""

from __future__ import annotations

from collections import deque

from aiohttp import ClientConnectionResetError, web

from sollol_proxy.forward.nodebody import NodeBody
from sollol_proxy.forward.watchdog import IdleWatch


class Pusher:
    __slots__ = (
        "_body",
        "_chunked",
        "_client",
        "_clock",
        "_idle",
        "_recent",
        "_request",
        "_transport",
        "gone",
    )

    def __init__(
        self,
        request: web.Request,
        body: NodeBody,
        recent: deque[bytes],
        idle: IdleWatch,
    ) -> None:
        self._request, self._body, self._recent = request, body, recent
        self._idle = idle
        self._chunked = False
        self._transport = request.transport
        self._client = request.protocol
        self._clock = idle.clock
        self.gone: ConnectionError | None = None  # the client went away while pushing

    async def rest(self) -> bytes:
        """Push the rest of the body (after the first bytes, written by the relay); b"" once
        it is all written or the client is gone (`gone`). Raises what broke the node's body."""
        request, body = self._request, self._body
        self._chunked = request.writer.chunked  # type: ignore[attr-defined]
        body.push(self.write)
        try:
            while not await body.pushed():
                if self.gone is not None:
                    return b""
                self._idle.done()  # waiting for the client, not for the node
                try:
                    await request.writer.drain()
                except ConnectionError as exc:
                    self.gone = exc
                    return b""
                self._idle.reading()
                body.go_on()
            return b""
        finally:
            # Whatever ends the answer (an in-stream error, the shutdown's cut) is written by
            # the relay after this: no later read of the node may be written after it.
            body.unpush()

    def write(self, data: bytes, framed: bytes | None) -> bool:
        """One read's body bytes, written to the client now; True when the client's buffer is
        full (the node's socket is then not read until it drained). `framed`: the node's read
        itself, when it is `data` as one chunk framed as aiohttp frames it. Called once per
        chunk of every stream: plain attribute reads and C calls only, no Python call below."""
        transport = self._transport  # a closed one says so: is_closing()
        if transport is None or transport.is_closing():
            self.gone = ClientConnectionResetError("Cannot write to closing transport")
            return True
        self._recent.append(data)
        if self._chunked:  # the node's own chunk when it is framed alike: the same bytes
            transport.write(framed or b"%x\r\n%b\r\n" % (len(data), data))
        else:
            transport.write(data)
        # The silence bound runs from this read. Its timer is armed while pushing (rest() calls
        # reading() before each stretch of pushes), so the read's time is all it needs.
        self._idle.since = self._clock()
        # aiohttp's `writing_paused` is a property returning this slot: read without the call.
        return self._client._paused
