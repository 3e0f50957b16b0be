"""The idle-read bound of a relayed answer, with one timer per answer instead of one per chunk.

`timeouts.idle_read` bounds the silence between two chunks of a node's answer. An
`asyncio.timeout` around every read would create, schedule and cancel a timer per chunk, most of
what relaying a chunk costs. Instead the relay notes when each read starts and ends, and one
timer per answer checks on it: fired early (the read under way began after the timer was set),
it is set again for that read's deadline; fired when a read has waited the whole bound, it puts
a TimeoutError into the node's stream, which the waiting read raises, as the timeout would have.
"""

from __future__ import annotations

import asyncio

import aiohttp

from sollol_proxy.forward.nodebody import NodeBody


class IdleWatch:
    __slots__ = ("_handle", "_limit", "_loop", "_stream", "clock", "since")

    def __init__(self, stream: aiohttp.StreamReader | NodeBody, limit: float) -> None:
        self._stream = stream
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self.clock = self._loop.time  # the timer's clock
        # When the read under way began; None: not reading. Once `reading()` has armed the
        # timer, it stays armed (re-armed by `_check`) until `done()`, so a caller may set this
        # itself, from `clock()`, for each read that begins (push.py does, per pushed chunk,
        # without a call here).
        self.since: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def reading(self) -> None:
        """A read of the node's stream starts now."""
        self.since = now = self._loop.time()
        # A stream whose end has arrived is read without waiting: no timer for that read (the
        # common case of a small answer, read whole before it is relayed).
        if self._handle is None and not self._stream.is_eof():
            self._handle = self._loop.call_at(now + self._limit, self._check)

    def done(self) -> None:
        """The read returned: the time until the next one (writing to the client) is not idle."""
        self.since = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if self.since is None:
            return  # between reads: the next read sets the timer again
        deadline = self.since + self._limit
        if self._loop.time() < deadline:
            self._handle = self._loop.call_at(deadline, self._check)
            return
        self._stream.set_exception(TimeoutError(f"no data for {self._limit:g}s"))
