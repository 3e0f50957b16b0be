"""A client that stops reading is cut after `limits.write_timeout`, whatever it was sent.

The bound lives where every answer goes through, the connection's asyncio protocol: the
transport calls `pause_writing` when its unsent bytes pass the high-water mark and
`resume_writing` when they drain, so one timer armed on the first and cancelled on the second
bounds a relayed stream, a fleet view, a pipelined burst and the proxy's own errors alike, and
a write that is not blocked costs nothing. A connection closed with bytes still unsent would
wait for them for ever (`transport.close()` flushes first); `bound_unsent` drops the high-water
mark to zero so that the same timer covers that wait too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

log = logging.getLogger("sollol.limits")
# SO_LINGER on, zero seconds: closing resets the connection and drops the unsent bytes, rather
# than leaving the kernel to offer them to a client that takes nothing (FIN-WAIT-1 for minutes).
RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class StallTimer:
    """One connection's write bound: armed by its protocol's `pause_writing`, disarmed by
    `resume_writing` and when the connection ends. `fired`: the connection was cut by it (the
    request being answered then ends as `client_stalled`, not `client_closed`)."""

    __slots__ = ("_handle", "fired")

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self.fired = False

    def arm(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.BaseTransport,
        client: str,
        limit: float,
    ) -> None:
        self.disarm()
        self._handle = loop.call_later(limit, self._fire, transport, client, limit)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self, transport: asyncio.BaseTransport, client: str, limit: float) -> None:
        self._handle = None
        self.fired = True
        _cut(transport, client, limit)


def cut_for_stalling(protocol: object) -> bool:
    """Whether the connection `protocol` serves was cut by its write bound; a protocol of
    neither engine (an app served without the limits) has none."""
    stall = getattr(protocol, "stall", None)
    return isinstance(stall, StallTimer) and stall.fired


def bound_unsent(transport: asyncio.BaseTransport) -> None:
    """A connection being closed: any byte still unsent counts as a blocked write, so that the
    flush `transport.close()` waits for is bounded by the stall timer."""
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=0)  # calls pause_writing if any byte is left


def _cut(transport: asyncio.BaseTransport, client: str, limit: float) -> None:
    log.warning(
        "cut a connection from %s: it read nothing for %gs (limits.write_timeout)", client, limit
    )
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # already gone: abort() below is all there is to do
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
    transport.abort()  # type: ignore[attr-defined]
