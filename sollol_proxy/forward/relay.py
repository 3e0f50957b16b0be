"""Relaying one node's answer to the client, byte for byte, and what happens if it breaks.

After the first byte nothing can be retried: a stream that breaks ends with the in-stream error
the client's library raises on (NDJSON error line, SSE error event), never a silent truncation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from sollol_proxy.config import Config
from sollol_proxy.fleet.fleet import Fleet, describe_error
from sollol_proxy.fleet.health import Failure
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.forward.nodebody import NodeBody
from sollol_proxy.forward.push import Pusher
from sollol_proxy.forward.record import Outcome, RequestRecord
from sollol_proxy.forward.upstream import Opened
from sollol_proxy.forward.watchdog import IdleWatch
from sollol_proxy.lifecycle.cors import FROM_NODE
from sollol_proxy.lifecycle.drain import CUT_MESSAGE, is_cut
from sollol_proxy.wire.errors import stream_error_bytes
from sollol_proxy.wire.headers import REQUEST_ID_HEADER, downstream_response_headers
from sollol_proxy.wire.timings import Timings, parse_timings
from sollol_proxy.wire.usage import usage_counts

if TYPE_CHECKING:
    from sollol_proxy.forward.attempt import Attempt
    from sollol_proxy.forward.pool import PooledResponse

log = logging.getLogger("sollol.proxy")
# The final object of a response (where Ollama's timing fields are) is in its last few writes.
TAIL_CHUNKS = 4


async def relay(
    request: web.Request,
    opened: Opened,
    node: NodeState,
    routing: dict[str, str],
    attempt: Attempt | None,
    record: RequestRecord,
    fleet: Fleet,
    config: Config,
    upstream_done: Callable[[], None] | None = None,
) -> web.StreamResponse:
    """Stream the node's answer to the client, one write per upstream read; `upstream_done`
    is called when the node has sent its last byte."""
    upstream = opened.response
    try:
        response = _response_to(upstream, routing)
    except Exception:
        # A pooled connection is nobody's garbage: not closed here, it and the node's slot
        # would stay taken.
        upstream.close()
        raise
    complete = False
    recent: deque[bytes] = deque(maxlen=TAIL_CHUNKS)
    content = upstream.content
    idle = IdleWatch(content, config.timeouts.idle_read)  # one timer, not one per read
    # On a pooled connection, the reads after the first go from the node's socket to the
    # client's in the callback that brings them (push.py); otherwise each is awaited here, as
    # is the end of an answer that came whole with its first bytes (a small one).
    pusher = None
    if isinstance(content, NodeBody) and not content.is_eof():
        pusher = Pusher(request, content, recent, idle)
    timings: Timings | None = None
    ended = False  # the node has sent its last byte, and the node's side is done

    def node_done() -> None:
        # Called by the upstream's reader the moment it has the node's last byte (at once
        # when it had it already): the slot goes on now, not when the relay has written the
        # answer out to the client, and no task is woken first. (A client too slow to take the
        # pushed bytes still delays the last one: push.py stops reading the node meanwhile.)
        nonlocal timings, ended
        ended = True
        # What was neither relayed nor pushed yet (aiohttp's reader: its buffer, 3.14 pinned;
        # an empty body's reader has none).
        if isinstance(content, NodeBody):
            unread = content.unread()
        else:
            unread = getattr(content, "_buffer", ())
        tail = [*(recent or (opened.first_chunk,)), *unread][-TAIL_CHUNKS:]
        timings = parse_timings(b"".join(tail))
        try:
            if attempt is not None:
                # Before the slot is handed on: what the answer taught (a node with more slots
                # than believed, what this one left in the node's cache) applies to the next.
                attempt.finished(upstream.status, timings)
        finally:  # the reader only logs what a callback raises: the slot is given back anyway
            if upstream_done is not None:
                upstream_done()

    content.on_eof(node_done)
    try:
        await response.prepare(request)
        chunk = opened.first_chunk
        while chunk:
            recent.append(chunk)  # before the write: a cut during the write knows it
            # One write per upstream read: nothing is held back. A client that stops taking
            # them is cut by its connection's write bound (lifecycle/stall.py).
            await response.write(chunk)
            if record.ttft_s is None:
                record.ttft_s = time.monotonic() - record.started
            try:
                idle.reading()
                if pusher is not None:
                    chunk = await pusher.rest()  # b"": all pushed, or the client left
                else:
                    chunk = await content.readany()
                idle.done()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                if attempt is not None:
                    attempt.failed()
                tail = b"".join(recent)[-2:]
                record.outcome = Outcome.MIDSTREAM_FAILURE
                await _broken_stream(request, response, upstream, node, exc, tail, fleet, config)
                return response
        if pusher is not None and pusher.gone is not None:
            raise pusher.gone  # as a failed write to the client would
        tail = b"".join(recent)  # the end was read: node_done() has run
        await response.write_eof()
        complete = True
        if upstream.status < 500:  # a relayed 5xx was already counted as the node's failure
            node.health.succeeded()
        if timings is not None:
            record.tokens_in, record.tokens_out = timings.prompt_tokens, timings.output_tokens
        elif (counted := usage_counts(tail)) is not None:
            record.tokens_in, record.tokens_out = counted
        return response
    except asyncio.CancelledError as exc:
        if not (is_cut(exc) and response.prepared):
            raise
        # The shutdown's grace period is over: the client is told, not silently cut.
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        record.outcome = Outcome.CUT_BY_SHUTDOWN
        await _end_stream(request, response, upstream, CUT_MESSAGE, b"".join(recent)[-2:])
        return response
    finally:
        idle.close()
        if complete or ended:  # the node sent it all: its connection can serve again
            upstream.release()
        else:
            # The client left or the stream broke: closing makes Ollama cancel the generation
            # and free its slot (reference 1.4).
            upstream.close()


def _response_to(
    upstream: aiohttp.ClientResponse | PooledResponse, routing: dict[str, str]
) -> web.StreamResponse:
    """The client's answer head: the node's status, reason and end-to-end headers, and the
    routing headers."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    # The head goes out with the first bytes, which are at hand (as web.Response does): one
    # socket write fewer per answer, and a small answer in one segment.
    response._send_headers_immediately = False
    response[FROM_NODE] = True
    response.headers.extend(downstream_response_headers(upstream.headers))
    response.headers.update(routing)
    length = upstream.headers.get("Content-Length")
    if length is not None and length.isdigit():
        # Same framing as the node: a sized body stays sized, a chunked stream stays chunked.
        response.content_length = int(length)
    return response


async def _broken_stream(
    request: web.Request,
    response: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    node: NodeState,
    exc: BaseException,
    tail: bytes,
    fleet: Fleet,
    config: Config,
) -> None:
    reason = (
        f"idle for {config.timeouts.idle_read:g}s"
        if isinstance(exc, TimeoutError)
        else describe_error(exc)
    )
    node.health.counters.mid_stream_failures += 1
    kind = Failure.TIMEOUT if isinstance(exc, TimeoutError) else Failure.RESET
    fleet.mark_failed(node, f"stream broke: {reason}", kind)
    message = (
        f"sollol-proxy: node {node.name} failed mid-response ({reason}); the response is incomplete"
    )
    log.warning("%s: %s", response.headers.get(REQUEST_ID_HEADER, "-"), message)
    await _end_stream(request, response, upstream, message, tail)


async def _end_stream(
    request: web.Request,
    response: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    message: str,
    tail: bytes,
) -> None:
    """End an answer the client already has part of, so that its library raises `message`."""
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
