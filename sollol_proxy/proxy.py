"""Forward one request to the best node and stream its answer back, byte for byte.

Errors before the client received anything become a failover to the next node, or a status.
Errors after that become an in-stream error the client's library raises on, never a silent end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .config import Config
from .drain import CUT_MESSAGE, is_cut
from .errors import error_response, stream_error_bytes
from .fleet import Fleet, NodeState, describe_error
from .headers import (
    NODE_HEADER,
    QUEUE_HEADER,
    REQUEST_ID_HEADER,
    ROUTE_HEADER,
    downstream_response_headers,
)
from .learning import parse_timings
from .record import Outcome, RequestRecord
from .routing.types import Reason
from .upstream import Body, Opened, UpstreamFailure, open_upstream

if TYPE_CHECKING:
    from .admission import Slot
    from .dispatch import Attempt, DispatchObserver

log = logging.getLogger("sollol.proxy")
# The final object of a response (where Ollama's timing fields are) is in its last few writes.
TAIL_CHUNKS = 4

# Ollama answers 503 when its scheduler queue is full (reference 5.2): another node may have room.
BUSY_STATUS = 503


@dataclass(frozen=True, slots=True)
class Target:
    node: NodeState
    route: str  # strategy and reason, for X-Sollol-Route
    reason: Reason  # the bounded category of `route`, for metrics and the access log


class Forwarder:
    def __init__(self, config: Config, session: aiohttp.ClientSession, fleet: Fleet) -> None:
        self._config = config
        self._session = session
        self._fleet = fleet

    def reconfigure(self, config: Config) -> None:
        self._config = config

    @contextlib.asynccontextmanager
    async def _attempt(
        self, node: NodeState, observer: DispatchObserver | None
    ) -> AsyncIterator[Attempt | None]:
        if observer is None:
            async with self._fleet.lease(node):
                yield None
        else:
            async with observer.attempt(node) as attempt:
                yield attempt

    async def forward(
        self,
        request: web.Request,
        body: Body,
        targets: Sequence[Target],
        record: RequestRecord,
        observer: DispatchObserver | None = None,
        *,
        first_byte: float | None,
        slot: Slot | None = None,
    ) -> web.StreamResponse:
        """`slot`, when admission control admitted the request, moves with each failover and
        a node without a free slot for it is skipped."""
        request_id = record.request_id
        replayable = isinstance(body, bytes | None)
        attempts = list(targets[: self._config.max_attempts if replayable else 1])
        failures: list[tuple[str, UpstreamFailure]] = []
        for index, target in enumerate(attempts):
            node = target.node
            if slot is not None and not slot.hold(node):
                failures.append((node.name, UpstreamFailure("no free slot", node_down=False)))
                record.failed_attempts.append((node.name, "no free slot"))
                continue
            async with self._attempt(node, observer) as attempt:
                try:
                    opened = await open_upstream(self._session, request, node, body, first_byte)
                except UpstreamFailure as exc:
                    if attempt is not None:
                        attempt.failed()
                    if exc.node_down:
                        self._fleet.mark_failed(node, exc.reason)
                    log.warning(
                        "%s: node %s failed before the first byte: %s",
                        request_id,
                        node.name,
                        exc.reason,
                    )
                    failures.append((node.name, exc))
                    record.failed_attempts.append((node.name, exc.reason))
                    continue
                if opened.response.status == BUSY_STATUS and index < len(attempts) - 1:
                    opened.response.close()
                    log.info(
                        "%s: node %s is busy (503), trying the next node", request_id, node.name
                    )
                    failures.append((node.name, UpstreamFailure("busy (503)", node_down=False)))
                    record.failed_attempts.append((node.name, "busy (503)"))
                    continue
                route = target.route
                if failures:
                    route += " (after " + ", ".join(f"{n}: {f.reason}" for n, f in failures) + ")"
                routing = {
                    NODE_HEADER: node.name,
                    ROUTE_HEADER: route,
                    REQUEST_ID_HEADER: request_id,
                }
                if slot is not None:
                    routing[QUEUE_HEADER] = f"{record.queue_s * 1000:.0f}"
                if attempt is not None:
                    attempt.first_byte(opened.response.status)
                record.node, record.route, record.status = node.name, route, opened.response.status
                record.reason = target.reason.value
                return await self._relay(request, opened, node, routing, attempt, record)
        return self._all_failed(request, failures, request_id)

    def _all_failed(
        self, request: web.Request, failures: list[tuple[str, UpstreamFailure]], request_id: str
    ) -> web.Response:
        status = 504 if failures and all(f.timed_out for _, f in failures) else 502
        detail = "; ".join(f"{name}: {f.reason}" for name, f in failures)
        response = error_response(request.path, status, f"no Ollama node could answer ({detail})")
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    async def _relay(
        self,
        request: web.Request,
        opened: Opened,
        node: NodeState,
        routing: dict[str, str],
        attempt: Attempt | None,
        record: RequestRecord,
    ) -> web.StreamResponse:
        upstream = opened.response
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(downstream_response_headers(upstream.headers))
        response.headers.update(routing)
        length = upstream.headers.get("Content-Length")
        if length is not None and length.isdigit():
            # Same framing as the node: a sized body stays sized, a chunked stream stays chunked.
            response.content_length = int(length)
        complete = False
        recent: deque[bytes] = deque(maxlen=TAIL_CHUNKS)
        try:
            await response.prepare(request)
            chunk = opened.first_chunk
            while chunk:
                recent.append(chunk)  # before the write: a cut during the write knows it
                await response.write(chunk)  # one write per upstream read: nothing is held back
                if record.ttft_s is None:
                    record.ttft_s = time.monotonic() - record.started
                try:
                    async with asyncio.timeout(self._config.timeouts.idle_read):
                        chunk = await upstream.content.readany()
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    if attempt is not None:
                        attempt.failed()
                    tail = b"".join(recent)[-2:]
                    record.outcome = Outcome.MIDSTREAM_FAILURE
                    await self._broken_stream(request, response, upstream, node, exc, tail)
                    return response
            await response.write_eof()
            complete = True
            tail = b"".join(recent)
            timings = parse_timings(tail)
            if timings is not None:
                record.tokens_in, record.tokens_out = timings.prompt_tokens, timings.output_tokens
            if attempt is not None:
                attempt.finished(upstream.status, tail)
            return response
        except asyncio.CancelledError as exc:
            if not (is_cut(exc) and response.prepared):
                raise
            # The shutdown's grace period is over: the client is told, not silently cut.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            record.outcome = Outcome.CUT_BY_SHUTDOWN
            await self._end_stream(request, response, upstream, CUT_MESSAGE, recent)
            return response
        finally:
            if complete:
                upstream.release()
            else:
                # The client left or the stream broke: closing makes Ollama cancel the generation
                # and free its slot (reference 1.4).
                upstream.close()

    async def _broken_stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        node: NodeState,
        exc: BaseException,
        tail: bytes,
    ) -> None:
        reason = (
            f"idle for {self._config.timeouts.idle_read:g}s"
            if isinstance(exc, TimeoutError)
            else describe_error(exc)
        )
        if not isinstance(exc, TimeoutError):
            self._fleet.mark_failed(node, f"stream broke: {reason}")
        message = f"sollol-proxy: node {node.name} failed mid-response ({reason}); the response is incomplete"
        log.warning("%s: %s", response.headers.get(REQUEST_ID_HEADER, "-"), message)
        await self._end_stream(request, response, upstream, message, [tail])

    async def _end_stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        message: str,
        written: Sequence[bytes],
    ) -> None:
        """End an answer the client already has part of, so that its library raises `message`."""
        tail = b"".join(written)[-2:]
        ending = stream_error_bytes(
            request.path, upstream.headers.get("Content-Type", ""), message, tail
        )
        if ending:
            await response.write(ending)
            await response.write_eof()
        elif request.transport is not None:
            # Not a stream format that can carry an error: cut the connection so the client sees
            # a truncated body rather than a clean, shorter one.
            request.transport.close()
