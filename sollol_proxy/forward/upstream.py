"""Opening a request to one node. Everything that can fail before the node's first byte is here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import yarl
from multidict import CIMultiDictProxy

from sollol_proxy.fleet.fleet import describe_error
from sollol_proxy.fleet.health import Failure
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.forward.pool import ConnectFailed, NodePool, PooledResponse
from sollol_proxy.wire.headers import upstream_request_headers
from sollol_proxy.wire.peek import BodyTimeout

Body = bytes | AsyncIterable[bytes] | None
# A request body larger than this goes to the node in slices of this size.
UPLOAD_SLICE = 256 * 1024


class UpstreamFailure(Exception):
    """The node could not be used for this request; another node may still serve it."""

    def __init__(self, reason: str, kind: Failure) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind

    @property
    def node_down(self) -> bool:
        """The connection failed or broke (not merely slow)."""
        return self.kind in (Failure.CONNECT, Failure.RESET)

    @property
    def timed_out(self) -> bool:
        return self.kind is Failure.TIMEOUT


class Outgoing(Protocol):
    """What opening an upstream request needs of the request it forwards: a client's
    `web.Request`, or a request the proxy makes itself (an embedding sub-batch)."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def transport(self) -> asyncio.BaseTransport | None: ...


@dataclass(slots=True)
class Opened:
    response: aiohttp.ClientResponse | PooledResponse
    first_chunk: bytes


def client_ip(request: Outgoing) -> str | None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return peer[0] if peer else None


async def open_upstream(
    session: aiohttp.ClientSession,
    request: Outgoing,
    node: NodeState,
    body: Body,
    first_byte: float | None,
    pool: NodePool | None = None,
) -> Opened:
    """Send the request and wait for the first body bytes (Ollama sends headers with them).

    `first_byte` bounds that wait, or None for no bound: a non-streamed answer only comes when
    the whole generation is done, and an upload's answer only after the upload.

    Waiting for the first chunk before answering the client is what makes failover safe: until
    then the client has received nothing, so another node can still take the request.

    With `pool`, a request whose body is bytes goes on the pool's connections (pool.py).
    """
    headers = upstream_request_headers(request.headers, node.config, client_ip(request))
    data: Body = body
    pooled = pool is not None and isinstance(body, bytes | None) and request.method != "HEAD"
    if not pooled and isinstance(body, bytes) and len(body) > UPLOAD_SLICE:
        # Written whole, a large body is copied into the transport's buffer in one callback
        # and shifted down after every send: slices with backpressure keep the loop free.
        headers["Content-Length"] = str(len(body))
        data = _slices(body)
    elif not isinstance(body, bytes | None) and request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    response: aiohttp.ClientResponse | PooledResponse | None = None
    try:
        async with asyncio.timeout(first_byte):
            if pooled:
                assert pool is not None and isinstance(body, bytes | None)
                response = await pool.request(
                    request.method, node.config.url, request.raw_path, headers, body
                )
            else:
                # encoded=True: the path goes out as the client wrote it (yarl resolves `..`).
                url = yarl.URL(node.config.url + request.raw_path, encoded=True)
                response = await session.request(
                    request.method, url, headers=headers, data=data, allow_redirects=False
                )
            first = await response.content.readany()
    except ConnectFailed as exc:
        raise UpstreamFailure(str(exc), Failure.CONNECT) from exc
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        # Before the TimeoutError branch: a connect timeout is also a TimeoutError.
        raise UpstreamFailure(_connect_reason(exc), Failure.CONNECT) from exc
    except TimeoutError as exc:
        if response is not None:
            response.close()
        raise UpstreamFailure(f"no response within {first_byte:g}s", Failure.TIMEOUT) from exc
    except (aiohttp.ClientError, OSError) as exc:
        if response is not None:
            response.close()
        if isinstance(exc.__cause__, BodyTimeout):
            raise exc.__cause__ from None  # the client's upload stalled, not the node
        raise UpstreamFailure(describe_error(exc), Failure.RESET) from exc
    except BaseException:  # the client went away: the node must see the connection close
        if response is not None:
            response.close()
        raise
    return Opened(response, first)


async def _slices(body: bytes) -> AsyncIterator[memoryview]:
    view = memoryview(body)
    for start in range(0, len(body), UPLOAD_SLICE):
        yield view[start : start + UPLOAD_SLICE]


def _connect_reason(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "cannot connect (timed out)"
    return describe_error(exc)
