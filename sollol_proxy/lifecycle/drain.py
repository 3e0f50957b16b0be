"""Graceful shutdown: the requests in flight, waited for up to a grace period, then cut.

Every request runs inside `Drain.middleware`, which tracks its task. On shutdown the server
stops accepting, waits for the tracked tasks, and cancels those still running when the grace
period is over with `CUT`: the forwarder ends a stream cancelled that way with the proxy's
in-stream error, and a request with nothing sent yet gets a 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from sollol_proxy.wire.errors import error_response
from sollol_proxy.wire.headers import REQUEST_ID_HEADER, new_request_id

log = logging.getLogger("sollol.drain")

# The cancel message of a request cut by the end of the grace period.
CUT = "sollol-proxy: shutting down"
CUT_MESSAGE = "sollol-proxy is shutting down; the response is incomplete"  # in-stream
CUT_BEFORE_ANSWER = "sollol-proxy is shutting down; try again"  # 503, nothing sent yet

# The id of a request the shutdown cut, set by the handler, for the drain's 503 to carry.
CUT_REQUEST_ID = web.RequestKey("sollol_cut_request_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_cut(exc: asyncio.CancelledError) -> bool:
    """Whether this cancellation is the shutdown's, as opposed to a client that went away."""
    return bool(exc.args) and exc.args[0] == CUT


class Drain:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.cut = 0  # requests cut by the end of the grace period

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._idle.clear()
        try:
            return await handler(request)
        except asyncio.CancelledError as exc:
            if not is_cut(exc) or request.writer.output_size > 0:
                raise  # a client that left, or an answer that had started: the connection ends
            task.uncancel()
            response = error_response(request.path, 503, CUT_BEFORE_ANSWER)
            response.headers[REQUEST_ID_HEADER] = request.get(CUT_REQUEST_ID) or new_request_id()
            response.force_close()  # the server is closing: no next request on this connection
            return response
        finally:
            self._tasks.discard(task)
            if not self._tasks:
                self._idle.set()

    async def wait(self, grace: float) -> bool:
        """Wait until no request is in flight, for at most `grace` seconds; True when none is."""
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def cut_all(self, within: float) -> None:
        """Cancel what is still running with `CUT`, and give it `within` seconds to say so."""
        tasks = list(self._tasks)
        self.cut += len(tasks)
        for task in tasks:
            task.cancel(CUT)
        if tasks:
            await asyncio.wait(tasks, timeout=within)
