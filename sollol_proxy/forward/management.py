"""pull, push, rm, cp and create across a fleet, so that it ends in the state the user expects.

An operation may run on several nodes at once (pull to every healthy node, rm everywhere the model
is). The client sees one Ollama answer: the first node's bytes, with the final `success` held back
until every node has finished and the proxy has re-read the inventory of each, so the very next
request through the proxy already sees the result. A node that failed turns that final line into
an Ollama-style error naming it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

import sollol_proxy.wire.gojson as gojson
from sollol_proxy.config import Config
from sollol_proxy.fleet.fleet import Fleet, describe_error
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.forward.inventory import LiveInventory
from sollol_proxy.forward.upstream import Opened, UpstreamFailure, open_upstream
from sollol_proxy.lifecycle.cors import FROM_NODE
from sollol_proxy.wire.headers import (
    NODE_HEADER,
    REQUEST_ID_HEADER,
    ROUTE_HEADER,
    downstream_response_headers,
)
from sollol_proxy.wire.logsafe import loggable

log = logging.getLogger("sollol.management")

NDJSON = "application/x-ndjson"
SUCCESS_MARK = b'"status":"success"'
# A secondary node's progress is only read for its last line; no line is longer than this.
MAX_LINE = 1 << 20


@dataclass(slots=True)
class Outcome:
    node: NodeState
    status: int
    error: str | None  # None when the node reports success


def _error_of(body: bytes) -> str | None:
    """The Ollama error carried by a JSON body or NDJSON line, if any."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = value.get("error") if isinstance(value, dict) else None
    return str(error) if error is not None else None


def _is_ndjson(response: aiohttp.ClientResponse) -> bool:
    return response.headers.get("Content-Type", "").startswith(NDJSON)


class Management:
    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        fleet: Fleet,
        inventory: LiveInventory,
    ) -> None:
        self._session = session
        self._fleet = fleet
        self._inventory = inventory
        # Progress lines come every few hundred milliseconds; silence this long means a hung node.
        # (No first-byte bound: a non-streamed pull or create answers only when done.)
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self._idle_read = config.timeouts.idle_read

    async def run(
        self,
        request: web.Request,
        body: bytes,
        nodes: Sequence[NodeState],
        request_id: str,
        route: str,
    ) -> web.StreamResponse:
        primary, others = nodes[0], nodes[1:]
        log.info(
            "%s: %s %s on %s [%s]",
            request_id,
            request.method,
            loggable(request.path),
            ", ".join(n.name for n in nodes),
            route,
        )
        background = [asyncio.create_task(self._collect(request, body, node)) for node in others]
        routing = {
            NODE_HEADER: ",".join(n.name for n in nodes),
            ROUTE_HEADER: route,
            REQUEST_ID_HEADER: request_id,
        }
        try:
            async with self._fleet.lease(primary):
                try:
                    opened = await open_upstream(self._session, request, primary, body, None)
                except UpstreamFailure as exc:
                    if exc.node_down:
                        self._fleet.mark_failed(primary, exc.reason)
                    outcomes = [
                        Outcome(primary, 502, exc.reason),
                        *await self._finish(background, nodes),
                    ]
                    return self._merged(request, None, b"", outcomes, routing)
                upstream = opened.response
                try:
                    if _is_ndjson(upstream) and upstream.status == 200:
                        return await self._relay_stream(request, opened, background, nodes, routing)
                    try:
                        first_body = await self._rest(upstream, opened.first_chunk)
                    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                        outcomes = [
                            Outcome(primary, 502, describe_error(exc)),
                            *await self._finish(background, nodes),
                        ]
                        return self._merged(request, None, b"", outcomes, routing)
                finally:
                    upstream.close()
            outcome = Outcome(
                primary,
                upstream.status,
                None
                if upstream.status < 400
                else (_error_of(first_body) or first_body.decode(errors="replace")),
            )
            outcomes = [outcome, *await self._finish(background, nodes)]
            return self._merged(request, upstream, first_body, outcomes, routing)
        finally:
            for task in background:
                task.cancel()
            # Awaited, not only cancelled: a secondary lets go of its node before the handler
            # ends, and none is left pending (or its failure unread) when the client is gone.
            ended = await asyncio.gather(*background, return_exceptions=True)
            for node, result in zip(others, ended, strict=True):
                if isinstance(result, Exception):
                    log.error("%s: node %s failed", request_id, node.name, exc_info=result)

    async def _finish(
        self, background: list[asyncio.Task[Outcome]], nodes: Sequence[NodeState]
    ) -> list[Outcome]:
        outcomes = list(await asyncio.gather(*background))
        # Re-read what the nodes now hold before the client hears the result; a fleet view
        # read before that is not the one the client's next `ollama list` joins.
        await asyncio.gather(*(self._fleet.refresh(node) for node in nodes))
        self._inventory.invalidate()
        return outcomes

    async def _collect(self, request: web.Request, body: bytes, node: NodeState) -> Outcome:
        """Run the operation on a secondary node and keep only how it ended."""
        async with self._fleet.lease(node):
            try:
                opened = await open_upstream(self._session, request, node, body, None)
            except UpstreamFailure as exc:
                if exc.node_down:
                    self._fleet.mark_failed(node, exc.reason)
                return Outcome(node, 502, exc.reason)
            upstream = opened.response
            try:
                last = await self._last_line(upstream, opened.first_chunk)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                return Outcome(node, 502, describe_error(exc))
            finally:
                upstream.close()
        if upstream.status >= 400:
            return Outcome(node, upstream.status, _error_of(last) or last.decode(errors="replace"))
        if _is_ndjson(upstream) and SUCCESS_MARK not in last:
            return Outcome(node, upstream.status, _error_of(last) or "stream ended without success")
        return Outcome(node, upstream.status, None)

    async def _rest(self, upstream: aiohttp.ClientResponse, first: bytes) -> bytes:
        """A non-streamed answer (a short JSON body): everything after its first chunk."""
        chunks = [first]
        while chunk := await self._read(upstream):
            chunks.append(chunk)
        return b"".join(chunks)

    async def _read(self, upstream: aiohttp.ClientResponse) -> bytes:
        async with asyncio.timeout(self._idle_read):
            return await upstream.content.readany()

    async def _last_line(self, upstream: aiohttp.ClientResponse, first: bytes) -> bytes:
        """Read a response to its end, keeping only its last line (or all of a one-line body)."""
        last, pending = b"", first
        while True:
            if b"\n" in pending:
                complete, _, pending = pending.rpartition(b"\n")
                last = complete.rsplit(b"\n", 1)[-1] or last
            pending = pending[-MAX_LINE:]
            chunk = await self._read(upstream)
            if not chunk:
                return pending if pending.strip() else last
            pending += chunk

    async def _relay_stream(
        self,
        request: web.Request,
        opened: Opened,
        background: list[asyncio.Task[Outcome]],
        nodes: Sequence[NodeState],
        routing: dict[str, str],
    ) -> web.StreamResponse:
        upstream = opened.response
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response[FROM_NODE] = True
        response.headers.extend(downstream_response_headers(upstream.headers))
        response.headers.update(routing)
        await response.prepare(request)
        primary = nodes[0]
        held: bytes | None = None
        primary_error: str | None = None
        error_line_sent = False
        pending = opened.first_chunk
        try:
            while True:
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    line += b"\n"
                    if SUCCESS_MARK in line:
                        held = line
                        continue
                    line_error = _error_of(line)
                    if line_error is not None:
                        primary_error, error_line_sent = line_error, True
                    await response.write(line)
                chunk = await self._read(upstream)
                if not chunk:
                    break
                pending += chunk
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            primary_error = f"stream broke: {describe_error(exc)}"
            self._fleet.mark_failed(primary, primary_error)
            pending = b"\n" if pending else b""
        if pending:
            await response.write(pending)
        primary_outcome = Outcome(
            primary, 200, None if held else (primary_error or "stream ended without success")
        )
        outcomes = [primary_outcome, *await self._finish(background, nodes)]
        failed = [o for o in outcomes if o.error is not None]
        if not failed and held is not None:
            await response.write(held)
        elif not error_line_sent:
            await response.write(gojson.dumps_line({"error": _summary(outcomes)}))
        await response.write_eof()
        return response

    def _merged(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse | None,
        body: bytes,
        outcomes: list[Outcome],
        routing: dict[str, str],
    ) -> web.Response:
        failed = [o for o in outcomes if o.error is not None]
        if upstream is not None and (not failed or (len(outcomes) == 1)):
            # One node, or every node agreed on success: the primary's answer, unchanged.
            response = web.Response(status=upstream.status, reason=upstream.reason, body=body)
            response[FROM_NODE] = True
            response.headers.extend(downstream_response_headers(upstream.headers))
        else:
            status = failed[0].status if failed else 502
            response = web.Response(status=status, body=gojson.dumps({"error": _summary(outcomes)}))
            response.headers["Content-Type"] = "application/json; charset=utf-8"
        response.headers.update(routing)
        return response


def _summary(outcomes: list[Outcome]) -> str:
    failed = [o for o in outcomes if o.error is not None]
    succeeded = [o.node.name for o in outcomes if o.error is None]
    text = "; ".join(f"node {o.node.name}: {o.error}" for o in failed)
    if succeeded:
        text += f" (succeeded on {', '.join(succeeded)})"
    return text
