"""Dynamic batching: small embedding calls that wait for a slot at the same time, for the same
model and fields, go to a node as one call (as Triton's and TEI's batchers do).

Nothing is delayed to form a batch: a call that finds a free slot goes at once, alone and
untouched. Only a call that would wait in the admission queue anyway may join a batch, and only
when every place the model has (capacity.model_room) already has a batch waiting for it, so that
merging never leaves a node idle. The batch's first call waits for the slot on behalf of all (the window is that
wait), then sends their inputs as one call and cuts the answer back per caller, vectors byte for
byte. Each caller's `prompt_eval_count` is the batch's count shared out by input length (Ollama
reports one count per call), `total_duration` its own time since arrival. A batch that a node
refuses with a `4xx` is not the callers' common error: each caller is then sent on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.http import HttpVersion11
from multidict import CIMultiDict

from sollol_proxy.embed.inputs import EmbedCall
from sollol_proxy.embed.merge import apportion, merged
from sollol_proxy.embed.subcall import Done, SubCalls, from_client
from sollol_proxy.fleet.capacity import model_room
from sollol_proxy.forward.record import RequestRecord
from sollol_proxy.lifecycle.cors import FROM_NODE
from sollol_proxy.wire.headers import NODE_HEADER, REQUEST_ID_HEADER, ROUTE_HEADER, SOLLOL_PREFIX
from sollol_proxy.wire.names import normalize_model

GO_WRITE_BUFFER = 2048  # net/http: a larger body is sent chunked


class _Drive:
    """A waiting caller's turn to wait for the slot for its batch (the driver left)."""


_ALONE = None  # a caller's outcome when it must be sent on its own


@dataclass(eq=False)
class _Member:
    call: EmbedCall
    request: web.Request
    record: RequestRecord
    future: asyncio.Future[web.StreamResponse | _Drive | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    left: bool = False  # its client went away: nobody reads its outcome

    def settle(self, outcome: web.StreamResponse | _Drive | Exception | None) -> None:
        if self.left or self.future.done():
            return
        if isinstance(outcome, Exception):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)


@dataclass(eq=False)
class _Batch:
    key: tuple[bytes, int]
    members: list[_Member] = field(default_factory=list)
    closed: bool = False  # a slot was granted: it is on its way to a node

    @property
    def inputs(self) -> int:
        return sum(len(m.call.inputs) for m in self.members)


class Coalescer:
    def __init__(self, calls: SubCalls) -> None:
        self._calls = calls
        self._open: dict[tuple[bytes, int], list[_Batch]] = {}
        self._numbers = itertools.count(1)

    async def answer(
        self, request: web.Request, call: EmbedCall, priority: int, record: RequestRecord
    ) -> web.StreamResponse | None:
        """The caller's answer, or None to send it on its own the usual way."""
        calls = self._calls
        model = normalize_model(call.model)
        holders = calls.fleet.with_model(model)
        if not holders or any(calls.admission.is_free(n, model) for n in holders):
            return _ALONE  # it would not wait: nothing to gain
        key = (call.key, priority)
        batches = self._open.setdefault(key, [])
        cap = calls.config.embed.coalesce_max_inputs
        room = sum(model_room(n, model) for n in holders)
        joinable = [b for b in batches if b.inputs + len(call.inputs) <= cap]
        member = _Member(call, request, record)
        if len(batches) >= room and joinable:
            batch = min(joinable, key=lambda b: b.inputs)
            batch.members.append(member)
            return await self._ride(batch, member, priority)
        batch = _Batch(key, [member])
        batches.append(batch)
        return await self._drive(batch, member, priority)

    async def _ride(
        self, batch: _Batch, member: _Member, priority: int
    ) -> web.StreamResponse | None:
        try:
            outcome = await asyncio.shield(member.future)
        except asyncio.CancelledError:
            member.left = True
            if not batch.closed and member in batch.members:
                batch.members.remove(member)
            raise
        if isinstance(outcome, _Drive):
            return await self._drive(batch, member, priority)
        return outcome

    async def _drive(
        self, batch: _Batch, member: _Member, priority: int
    ) -> web.StreamResponse | None:
        """Wait for a slot for the whole batch, send it, answer every member."""
        sub_id = f"{member.record.request_id}.c{next(self._numbers)}"

        def take(node: str) -> tuple[list[_Member], list[str]]:
            batch.closed = True
            self._close(batch)
            return list(batch.members), [t for m in batch.members for t in m.call.inputs]

        try:
            done = await self._calls.run(
                from_client(member.request), member.call, priority, sub_id, take
            )
        except asyncio.CancelledError:
            member.left = True
            if not batch.closed:
                batch.members.remove(member)
                self._hand_over(batch)
            else:  # its call to the node is abandoned: the others are sent on their own
                for other in batch.members:
                    other.settle(_ALONE)
            raise
        except Exception as exc:  # no slot (queue full, timeout) or no node: the same for all
            self._close(batch)
            for other in batch.members:
                if other is not member:
                    other.settle(exc)
            raise
        assert done is not None  # take() always returns the batch
        outcomes = self._outcomes(done)
        for other, outcome in zip(done.piece, outcomes, strict=True):
            if other is not member:
                other.settle(outcome)
        return outcomes[done.piece.index(member)]

    def _close(self, batch: _Batch) -> None:
        batches = self._open.get(batch.key, [])
        if batch in batches:
            batches.remove(batch)
        if not batches:
            self._open.pop(batch.key, None)

    def _hand_over(self, batch: _Batch) -> None:
        """The driver's client left while it waited: the next caller waits for the batch."""
        if batch.members:
            batch.members[0].settle(_Drive())
        else:
            self._close(batch)

    def _outcomes(self, done: Done[list[_Member]]) -> list[web.StreamResponse | None]:
        members = done.piece
        if done.answer is None:
            if len(members) > 1 and 400 <= done.response.status < 500:
                return [_ALONE] * len(members)
            return [_reframed(done.response, m) for m in members]  # the error all of them get
        if len(members) == 1:  # nobody joined: the node's own answer to this caller's call
            return [_reframed(done.response, members[0])]
        answer = done.answer
        counts = apportion(
            answer.prompt_tokens, [sum(len(t) for t in m.call.inputs) for m in members]
        )
        responses: list[web.StreamResponse | None] = []
        start = 0
        now = time.monotonic_ns()
        for member, tokens in zip(members, counts, strict=True):
            vectors = answer.vectors[start : start + len(member.call.inputs)]
            start += len(member.call.inputs)
            wall = max(now - int(member.record.started * 1e9), 1)
            body = merged(member.call.path, answer.model, vectors, wall, answer.load_ns, tokens)
            route = f"embed coalesced: {len(members)} calls, {len(answer.vectors)} inputs"
            responses.append(_respond(done.response, member, body, done.node, route, tokens))
        return responses


def _headers(source: web.Response) -> CIMultiDict[str]:
    return CIMultiDict(
        (k, v) for k, v in source.headers.items() if not k.lower().startswith(SOLLOL_PREFIX)
    )


def _respond(
    source: web.Response, member: _Member, body: bytes, node: str, route: str, tokens: int
) -> web.Response:
    headers = _headers(source)
    headers[NODE_HEADER] = node
    headers[ROUTE_HEADER] = route
    headers[REQUEST_ID_HEADER] = member.record.request_id
    response = web.Response(status=source.status, body=body, headers=headers)
    response[FROM_NODE] = True  # a node's headers, CORS included: the node saw the Origin
    if len(body) > GO_WRITE_BUFFER and member.request.version >= HttpVersion11:
        response.enable_chunked_encoding()
    record = member.record
    record.node, record.route, record.status, record.tokens_in = node, route, source.status, tokens
    return response


def _reframed(source: web.Response, member: _Member) -> web.Response:
    """A node's own answer (or the error all callers of a batch get) for one caller."""
    body = source.body
    assert isinstance(body, bytes)
    headers = _headers(source)
    route = source.headers.get(ROUTE_HEADER, "")
    node = source.headers.get(NODE_HEADER, "")
    headers[NODE_HEADER], headers[ROUTE_HEADER] = node, route
    headers[REQUEST_ID_HEADER] = member.record.request_id
    response = web.Response(status=source.status, body=body, headers=headers)
    response[FROM_NODE] = True  # a node's headers, CORS included: the node saw the Origin
    if len(body) > GO_WRITE_BUFFER and member.request.version >= HttpVersion11:
        response.enable_chunked_encoding()
    member.record.node, member.record.route, member.record.status = node, route, source.status
    return response
