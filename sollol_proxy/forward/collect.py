"""Reading a node's whole answer into memory, for the requests the proxy makes itself.

An embedding sub-batch (see `embed/`) is not relayed: its answer is parsed and merged with the
others. Since the client has received nothing yet, an answer that breaks off while it is read is
a failure another node can retry, unlike a relayed one (relay.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from sollol_proxy.config import Config
from sollol_proxy.fleet.fleet import Fleet, describe_error
from sollol_proxy.fleet.health import Failure
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.forward.failed import Failed
from sollol_proxy.forward.record import RequestRecord
from sollol_proxy.forward.upstream import Opened, Outgoing
from sollol_proxy.lifecycle.cors import FROM_NODE
from sollol_proxy.wire.headers import downstream_response_headers
from sollol_proxy.wire.timings import parse_timings

if TYPE_CHECKING:
    from sollol_proxy.forward.attempt import Attempt

# A node's answer to one sub-request is held whole; beyond this it is refused, not buffered.
MAX_COLLECTED_BYTES = 512 * 2**20
# The final object's timing fields are at the end of the body.
TAIL_BYTES = 512


async def collect(
    request: Outgoing,
    opened: Opened,
    node: NodeState,
    routing: dict[str, str],
    attempt: Attempt | None,
    record: RequestRecord,
    fleet: Fleet,
    config: Config,
    upstream_done: Callable[[], None] | None = None,
) -> web.Response | Failed:
    """The node's answer as an unsent `web.Response` (status, headers and body bytes as the
    node wrote them, plus `routing`), or a Failed when it broke off or grew too large."""
    upstream = opened.response
    chunks = [opened.first_chunk]
    size = len(opened.first_chunk)
    complete = False
    try:
        chunk = opened.first_chunk
        while chunk:
            async with asyncio.timeout(config.timeouts.idle_read):
                chunk = await upstream.content.readany()
            size += len(chunk)
            if size > MAX_COLLECTED_BYTES:
                return _failed(node, attempt, fleet, f"answer over {MAX_COLLECTED_BYTES} bytes")
            chunks.append(chunk)
        complete = True
    except TimeoutError:
        idle = f"answer stalled for {config.timeouts.idle_read:g}s"
        return _failed(node, attempt, fleet, idle, Failure.TIMEOUT, 504)
    except (aiohttp.ClientError, OSError) as exc:
        return _failed(node, attempt, fleet, f"answer broke: {describe_error(exc)}")
    finally:
        if complete:
            upstream.release()
        else:
            upstream.close()  # the node sees the connection close and frees its slot
    if upstream_done is not None:
        upstream_done()
    body = b"".join(chunks)
    if upstream.status < 500:
        node.health.succeeded()
    timings = parse_timings(body[-TAIL_BYTES:])
    if timings is not None:
        record.tokens_in = timings.prompt_tokens
    if attempt is not None:
        attempt.finished(upstream.status, timings)
    response = web.Response(status=upstream.status, reason=upstream.reason, body=body)
    response.headers.extend(downstream_response_headers(upstream.headers))
    response.headers.update(routing)
    response[FROM_NODE] = True  # its CORS headers are the node's
    return response


def _failed(
    node: NodeState,
    attempt: Attempt | None,
    fleet: Fleet,
    reason: str,
    kind: Failure = Failure.RESET,
    status: int = 502,
) -> Failed:
    if attempt is not None:
        attempt.failed()
    fleet.mark_failed(node, reason, kind)
    return Failed(node.name, reason, status)
