"""One sub-batch of an embedding call, sent the way a client's request is: the routing picks
the node, admission control gives it a slot (so interactive requests keep their turn and no
node is sent more than it can run), and the forwarder retries it on another node if its node
fails, with the same health bookkeeping. Only the answer is read whole instead of relayed.

The inputs are chosen when the slot is granted (late binding), so that their number can suit
the node that will embed them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from sollol_proxy import __version__
from sollol_proxy.admission.admission import Admission
from sollol_proxy.admission.tickets import Slot
from sollol_proxy.config import Config
from sollol_proxy.embed.inputs import EmbedCall
from sollol_proxy.embed.merge import Answer, BadAnswer, read_answer
from sollol_proxy.embed.speed import EmbedSpeed
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.plan import Plan
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.fleet.selector import Selector
from sollol_proxy.forward.attempt import DispatchObserver
from sollol_proxy.forward.collect import collect
from sollol_proxy.forward.forwarder import Forwarder
from sollol_proxy.forward.record import RequestRecord
from sollol_proxy.routing.analysis import analyze
from sollol_proxy.wire.errors import error_response
from sollol_proxy.wire.names import normalize_model

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SubRequest:
    """A request the proxy sends itself (what `forward.upstream.Outgoing` needs)."""

    method: str
    path: str
    raw_path: str
    headers: CIMultiDictProxy[str]
    transport: asyncio.BaseTransport | None = None
    content_length: int | None = None


def from_client(request: web.Request) -> SubRequest:
    """Sub-batches of a client's call carry its headers (its pinned node, its credentials for
    an auth proxy in front of a node) and its address for X-Forwarded-For."""
    return SubRequest("POST", request.path, request.raw_path, request.headers, request.transport)


_JOB_HEADERS = CIMultiDictProxy(
    CIMultiDict({"Content-Type": "application/json", "User-Agent": f"sollol-proxy/{__version__}"})
)


def for_job(path: str) -> SubRequest:
    """Sub-batches of a batch job: no client is connected."""
    return SubRequest("POST", path, path, _JOB_HEADERS)


@dataclass(slots=True)
class Done(Generic[T]):
    """A sub-batch that a node answered (or that no node could)."""

    piece: T
    count: int  # inputs in it
    node: str  # the node that answered ("" when none did)
    response: web.Response  # the answer as collected: status, headers, body
    answer: Answer | None  # its embeddings, when it is a complete 200 answer
    seconds: float


class SubCalls:
    def __init__(
        self,
        config: Config,
        fleet: Fleet,
        selector: Selector,
        admission: Admission,
        forwarder: Forwarder,
        learner: Learner,
        prompt_cache: PromptCache,
        speed: EmbedSpeed,
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.admission = admission
        self._selector = selector
        self._forwarder = forwarder
        self._learner = learner
        self._prompt_cache = prompt_cache
        self.speed = speed

    def reconfigure(self, config: Config) -> None:
        self.config = config

    async def run(
        self,
        outgoing: SubRequest,
        call: EmbedCall,
        priority: int,
        request_id: str,
        take: Callable[[str], tuple[T, Sequence[str]] | None],
    ) -> Done[T] | None:
        """Wait for a node, let `take(node name)` pick the inputs for it, send them.

        None when `take` had nothing left once a node was free."""
        model = normalize_model(call.model)
        profile = analyze(call.path, dict(call.payload), model, False)
        # The selector reads only the headers of the request (a pinned node).
        routed = await self._selector.for_model(outgoing, profile, request_id, priority)  # type: ignore[arg-type]
        if isinstance(routed, Plan):  # no node lists the model: one answers Ollama's own error
            return await self._send(outgoing, call, model, priority, request_id, routed, None, take)
        async with self.admission.admit(
            priority, model, routed.key, routed.nodes, routed.choose
        ) as slot:
            return await self._send(
                outgoing, call, model, priority, request_id, slot.plan, slot, take
            )

    async def _send(
        self,
        outgoing: SubRequest,
        call: EmbedCall,
        model: str,
        priority: int,
        request_id: str,
        plan: Plan,
        slot: Slot | None,
        take: Callable[[str], tuple[T, Sequence[str]] | None],
    ) -> Done[T] | None:
        picked = take(plan.targets[0].node.name)
        if picked is None:
            return None
        piece, inputs = picked
        payload = dict(call.payload)
        payload["input"] = list(inputs)
        profile = analyze(call.path, payload, model, False)
        record = RequestRecord(request_id, "POST", call.path, None, model=model, priority=priority)
        if slot is not None:
            record.admitted, record.queue_s = True, slot.waited_s
        observer = DispatchObserver(
            self.fleet,
            self._learner,
            self._prompt_cache,
            profile,
            plan.decision,
        )
        started = time.monotonic()
        response = await self._forwarder.forward(
            outgoing,
            call.body(inputs),
            plan.targets,
            record,
            observer,
            first_byte=self.config.timeouts.first_byte_for(call.path, False),
            slot=slot,
            deliver=collect,
        )
        seconds = time.monotonic() - started
        assert isinstance(response, web.Response)  # collect() and the forwarder's own errors
        answer = None
        if response.status == 200:
            answer, response = self._read(call.path, record.node, response, len(inputs))
        if answer is not None:
            self.speed.observe(record.node, model, len(inputs), seconds)
        elif record.node:
            self.speed.failed[record.node] += len(inputs)
        return Done(piece, len(inputs), record.node, response, answer, seconds)

    @staticmethod
    def _read(
        path: str, node: str, response: web.Response, count: int
    ) -> tuple[Answer | None, web.Response]:
        body = response.body
        assert isinstance(body, bytes)
        try:
            answer = read_answer(path, body)
            if len(answer.vectors) != count:
                raise BadAnswer(f"{len(answer.vectors)} embeddings for {count} inputs")
        except BadAnswer as exc:
            return None, error_response(path, 502, f"node {node} answered badly: {exc}")
        return answer, response
