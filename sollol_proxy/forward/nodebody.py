"""One answer's body on a pooled node connection, as the node protocol (nodewire.py) reads it:
read by the awaiting side (`readany`, as aiohttp's `StreamReader`), or pushed to a sink from
the protocol's callback (`push`, for push.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("sollol.proxy")
# Bytes read but not yet taken by a reader before the node's socket stops being read.
READ_AHEAD = 2**18
# What a sink does with a read's body bytes; True when the client's buffer is full (the node's
# socket then stops being read until the client drained it). The second argument is the read
# itself when it is exactly one chunk of those bytes, framed as aiohttp frames a chunked write
# (`%x` size, no extension), so that a chunked answer can pass it on as it came; else None.
Sink = Callable[[bytes, bytes | None], bool]


class Reading(Protocol):
    """What the body asks of its connection: stop and resume reading the node's socket, and
    the sink its reads go to while pushed (the protocol calls it itself for the common read of
    a stream, one whole chunk, without passing through `feed`)."""

    loop: asyncio.AbstractEventLoop
    sink: Sink | None

    def hold(self) -> None: ...
    def resume(self) -> None: ...


class NodeBody:
    """One answer's body as it arrives: read it, or have it pushed to a sink."""

    __slots__ = (
        "_chunks",
        "_eof",
        "_exc",
        "_held",
        "_loop",
        "_on_eof",
        "_protocol",
        "_sink",
        "_waiter",
    )

    def __init__(self, protocol: Reading) -> None:
        self._protocol = protocol
        self._loop = protocol.loop
        self._chunks: list[bytes] = []
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._held = False  # pushing paused: the sink's client is not reading
        self._on_eof: Callable[[], None] | None = None

    def is_eof(self) -> bool:
        """The whole body has arrived."""
        return self._eof

    def on_eof(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the whole body has arrived (now if it has), from the callback
        that read its end (as aiohttp's `StreamReader.on_eof`)."""
        if self._eof:
            callback()
        else:
            self._on_eof = callback

    def unread(self) -> list[bytes]:
        """What has arrived and was neither read nor pushed yet."""
        return self._chunks

    def set_exception(self, exc: BaseException) -> None:
        """The read under way (or the next) raises `exc` (the idle watchdog's timeout)."""
        self._exc = exc
        self._wake()

    async def readany(self) -> bytes:
        """What has arrived since the last read (waiting for something), b"" at the end."""
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            await self._wait()
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._protocol.resume()
        return data

    def push(self, sink: Sink) -> None:
        """From now on each read's bytes go to `sink` as they arrive (see `pushed`)."""
        self._sink = sink
        if self._chunks:  # arrived before: sent first, in order
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._protocol.resume()
            if sink(data, None):
                self._held = True
                self._protocol.hold()
        self._protocol.sink = sink  # after what arrived before: no read can overtake it

    def unpush(self) -> None:
        """No more pushing: what still arrives is kept (and dropped with the connection)."""
        self._sink = self._protocol.sink = None

    async def pushed(self) -> bool:
        """Wait until the body is all pushed (True) or the sink asked to hold (False: call
        `go_on` once its client has drained); raises what broke the body."""
        while True:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return True
            if self._held:
                return False
            await self._wait()

    def go_on(self) -> None:
        self._held = False
        self._protocol.resume()

    # fed by the protocol

    def feed(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            if sink(data, None):
                self.full()
            return
        self._chunks.append(data)
        self._wake()
        if len(self._chunks) > 1 and sum(map(len, self._chunks)) > READ_AHEAD:
            self._protocol.hold()

    def full(self) -> None:
        """The sink's client is not reading: the node's socket is not read until it drained."""
        self._held = True
        self._protocol.hold()
        self._wake()

    def finish(self) -> None:
        self._eof = True
        self._wake()
        callback, self._on_eof = self._on_eof, None
        if callback is not None:
            try:
                callback()
            except Exception:  # the node's connection reads on (as aiohttp's reader does)
                log.exception("end-of-answer callback failed")

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
