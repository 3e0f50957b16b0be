"""A large embedding call spread over the nodes that hold its model, answered as one node would.

One worker per place the model has in the fleet (capacity.model_room); each waits for a slot
like any request of the call's priority, takes a sub-batch sized for the node it got
(split.py) and sends it through the forwarder, which retries it on another node if its node
fails. The vectors go back in input order, merged byte for byte (merge.py).

A sub-batch that cannot be answered (a node's `4xx`: the call itself is wrong; or every node
it was tried on failed) stops the split, and the whole call is forwarded untouched the usual
way: the client gets exactly what one node gives for it (Ollama's own error, or the proxy's
usual answer when the nodes fail), never a part of the result.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time

from aiohttp import web
from aiohttp.http import HttpVersion11
from multidict import CIMultiDict

from sollol_proxy.embed.crew import run_crew
from sollol_proxy.embed.inputs import EmbedCall
from sollol_proxy.embed.merge import merged
from sollol_proxy.embed.split import Partition
from sollol_proxy.embed.subcall import Done, SubCalls, from_client
from sollol_proxy.fleet.capacity import model_room
from sollol_proxy.forward.record import RequestRecord
from sollol_proxy.lifecycle.cors import FROM_NODE
from sollol_proxy.wire.headers import NODE_HEADER, REQUEST_ID_HEADER, ROUTE_HEADER, SOLLOL_PREFIX
from sollol_proxy.wire.names import normalize_model

# net/http sends a body larger than its write buffer chunked, a smaller one with Content-Length.
GO_WRITE_BUFFER = 2048


class _Failed(Exception):
    def __init__(self, done: Done[range]) -> None:
        super().__init__(done.node)
        self.done = done


async def split_call(
    calls: SubCalls,
    request: web.Request,
    call: EmbedCall,
    priority: int,
    record: RequestRecord,
) -> web.StreamResponse | None:
    """The merged answer, or None when the call must go whole to one node instead."""
    policy = calls.config.embed
    model = normalize_model(call.model)
    holders = calls.fleet.with_model(model)
    total = len(call.inputs)
    free = frozenset(n.name for n in holders if calls.admission.is_free(n, model))
    partition = Partition(
        total,
        calls.speed.rates([n.name for n in holders], model),
        free,
        policy.min_batch,
        policy.max_batch,
    )
    vectors: list[bytes] = [b""] * total
    answered: list[Done[range]] = []
    finished = asyncio.Event()
    outgoing = from_client(request)
    numbers = itertools.count(1)

    def take(node: str) -> tuple[range, list[str]] | None:
        span = partition.take(node)
        return None if span is None else (span, list(call.inputs[span.start : span.stop]))

    async def worker(_: int) -> None:
        while not finished.is_set():
            sub_id = f"{record.request_id}.{next(numbers)}"
            done = await calls.run(outgoing, call, priority, sub_id, take)
            if done is None:
                return
            if done.answer is None:
                raise _Failed(done)
            vectors[done.piece.start : done.piece.stop] = done.answer.vectors
            answered.append(done)
            if sum(d.count for d in answered) == total:
                finished.set()

    room = sum(model_room(n, model) for n in holders)
    workers = max(1, min(room, math.ceil(total / policy.min_batch)))
    try:
        await run_crew(worker, workers, finished)
    except _Failed as failed:
        status = failed.done.response.status
        record.failed_attempts.append((failed.done.node or "-", f"sub-batch answered {status}"))
        return None
    wall_ns = time.monotonic_ns() - int(record.started * 1e9)  # arrival to answer, as Ollama
    return _answer(request, call, record, answered, vectors, wall_ns)


def _answer(
    request: web.Request,
    call: EmbedCall,
    record: RequestRecord,
    answered: list[Done[range]],
    vectors: list[bytes],
    wall_ns: int,
) -> web.Response:
    first = answered[0].answer
    assert first is not None
    load = sum(d.answer.load_ns for d in answered if d.answer is not None)
    tokens = sum(d.answer.prompt_tokens for d in answered if d.answer is not None)
    body = merged(call.path, first.model, vectors, max(wall_ns, 1), load, tokens)
    nodes = list(dict.fromkeys(d.node for d in answered))
    last = answered[-1].response
    headers = CIMultiDict(
        (k, v) for k, v in last.headers.items() if not k.lower().startswith(SOLLOL_PREFIX)
    )
    route = (
        f"embed split: {len(vectors)} inputs in {len(answered)} sub-batches "
        f"over {len(nodes)} node{'s' if len(nodes) > 1 else ''}"
    )
    headers[NODE_HEADER] = ",".join(nodes)
    headers[ROUTE_HEADER] = route
    headers[REQUEST_ID_HEADER] = record.request_id
    response = web.Response(status=200, body=body, headers=headers)
    response[FROM_NODE] = True  # a node's headers, CORS included: the nodes saw the Origin
    if len(body) > GO_WRITE_BUFFER and request.version >= HttpVersion11:
        response.enable_chunked_encoding()
    record.node, record.route, record.reason, record.status = headers[NODE_HEADER], route, "", 200
    record.tokens_in = tokens
    return response
