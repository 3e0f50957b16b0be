"""The one entry point for every Ollama route: classify, peek, pick nodes, hand over."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

import sollol_proxy.forward.views as views
from sollol_proxy.admission.admission import Admission
from sollol_proxy.admission.priority import BadPriority, read_priority
from sollol_proxy.admission.tickets import QueueRejected, Slot
from sollol_proxy.config import Config
from sollol_proxy.config.access import MAX_PRIORITY
from sollol_proxy.embed.api import BatchApi
from sollol_proxy.embed.service import Embeddings
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.plan import NoTarget, Plan, Target
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.fleet.selector import Selector
from sollol_proxy.forward.attempt import DispatchObserver
from sollol_proxy.forward.forwarder import Forwarder
from sollol_proxy.forward.management import Management
from sollol_proxy.forward.record import Outcome, RecordSink, RequestRecord
from sollol_proxy.forward.upstream import client_ip
from sollol_proxy.forward.warmup import Warmer
from sollol_proxy.guard.guard import grant_of, refusal
from sollol_proxy.guard.quota import Refused
from sollol_proxy.lifecycle.drain import CUT_REQUEST_ID, is_cut
from sollol_proxy.lifecycle.stall import cut_for_stalling
from sollol_proxy.observe.admin import Admin
from sollol_proxy.routing import Reason
from sollol_proxy.routing.analysis import RequestProfile, analyze
from sollol_proxy.wire.body_budget import BodyBudget, BodyBudgetFull, BodyHold
from sollol_proxy.wire.errors import error_response
from sollol_proxy.wire.headers import (
    NODE_HEADER,
    QUEUE_HEADER,
    REQUEST_ID_HEADER,
    ROUTE_HEADER,
    new_request_id,
)
from sollol_proxy.wire.names import normalize_model
from sollol_proxy.wire.peek import (
    BodyTimeout,
    BodyTooComplex,
    BodyTooLarge,
    paced,
    peek_body,
    read_body,
)
from sollol_proxy.wire.routes import FLEET_VIEWS, Kind, classify, endpoint_label, routed_path

_MANAGEMENT = {
    Kind.PULL: "pull",
    Kind.PUSH: "push",
    Kind.DELETE: "delete",
    Kind.COPY: "copy",
    Kind.CREATE: "create",
}


# What a 503 from the queue suggests: long enough for a few generations to finish.
RETRY_AFTER_S = 5


@dataclass
class OllamaHandler:
    config: Config
    fleet: Fleet
    selector: Selector
    forwarder: Forwarder
    management: Management
    learner: Learner
    prompt_cache: PromptCache
    admin: Admin
    admission: Admission
    views: views.FleetViews
    sinks: Sequence[RecordSink]
    embeddings: Embeddings
    batches: BatchApi
    bodies: BodyBudget  # the request bodies held at once
    warmer: Warmer | None = None  # copies shared system prompts into idle slots (issue #18)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.bodies.resize(config.max_body_memory, config.max_body_bytes)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        client = client_ip(request)
        record = RequestRecord(
            new_request_id(), request.method, endpoint_label(request.path), client
        )
        # Whatever the request's end (an answer, an error, its client gone, cancelled while
        # queued), the body it held is given back when this returns or raises.
        hold = self.bodies.hold(client or "-")
        try:
            try:
                response = await self._dispatch(request, record, hold)
            except NoTarget as exc:
                response = error_response(request.path, exc.status, exc.message)
            except BodyTooLarge as exc:
                response = error_response(request.path, 413, str(exc))
            except BodyTooComplex as exc:
                response = error_response(request.path, 400, str(exc))
            except BodyTimeout as exc:
                response = error_response(request.path, 408, str(exc))
                response.force_close()  # the rest of the body is not read
            except BodyBudgetFull as exc:
                # Not 413 (this body is not too large, there are too many at once): 503 and
                # Retry-After, as Ollama's "server busy, please try again", which clients retry.
                response = error_response(request.path, 503, str(exc))
                response.headers["Retry-After"] = str(RETRY_AFTER_S)
                response.force_close()  # the body is not read: the connection cannot go on
            except Refused as exc:
                response = refusal(request.path, exc)
            except BadPriority as exc:
                response = error_response(request.path, 400, str(exc))
            except QueueRejected as exc:
                response = error_response(request.path, exc.status, exc.message)
                response.headers["Retry-After"] = str(RETRY_AFTER_S)
                record.queue_s = exc.waited_s
                response.headers[QUEUE_HEADER] = f"{exc.waited_s * 1000:.0f}"
        except asyncio.CancelledError as exc:
            if is_cut(exc):  # the shutdown's grace period ended: the drain answers 503
                request[CUT_REQUEST_ID] = record.request_id
                record.outcome = Outcome.CUT_BY_SHUTDOWN
                record.finish(503)
            else:
                # Cut by the write bound, or gone by itself.
                stalled = cut_for_stalling(request.protocol)
                record.outcome = Outcome.CLIENT_STALLED if stalled else Outcome.CLIENT_CLOSED
                record.finish(499)  # nginx's "client closed request": no answer was completed
            self._done(record)
            raise
        finally:
            hold.release()
        if not response.prepared:
            response.headers.setdefault(REQUEST_ID_HEADER, record.request_id)
        record.finish(response.status)
        self._done(record)
        return response

    def _done(self, record: RequestRecord) -> None:
        if record.endpoint == "/sollol/":
            return  # the proxy's own endpoints (dashboards poll them) are not traffic
        for sink in self.sinks:
            sink(record)

    async def _forward_model(
        self,
        request: web.Request,
        body: bytes | None,
        plan: Plan,
        profile: RequestProfile,
        record: RequestRecord,
        first_byte: float | None,
        slot: Slot | None = None,
    ) -> web.StreamResponse:
        observer = DispatchObserver(
            self.fleet, self.learner, self.prompt_cache, profile, plan.decision
        )
        if plan.decision is not None:
            record.strategy = plan.decision.strategy
        return await self.forwarder.forward(
            request, body, plan.targets, record, observer, first_byte=first_byte, slot=slot
        )

    async def _dispatch(
        self, request: web.Request, record: RequestRecord, hold: BodyHold
    ) -> web.StreamResponse:
        request_id = record.request_id
        grant = grant_of(request)  # the API key's limits, when keys are configured
        if grant is not None:
            record.key = grant.name
        route, param = classify(request.method, routed_path(request.path, request.raw_path))
        kind = route.kind
        pinned = request.headers.get(NODE_HEADER)
        if kind is Kind.ROOT:
            return views.root()
        if kind is Kind.SOLLOL:
            if self.batches.owns(request.path):
                return await self.batches.handle(request, hold)
            return self.admin.handle(request)
        if kind in FLEET_VIEWS and not pinned:
            response = await self.views.answer(kind)
            record.route = response.headers[ROUTE_HEADER]
            return response
        if kind is Kind.BLOB:
            # Uploads can be gigabytes: streamed straight through, never held (so no failover).
            targets = self.selector.pinned(request, allow_all=False) or [self.selector.placement()]
            target = Target(
                targets[0],
                "blob: " + ("pinned" if pinned else "placement node (first healthy node)"),
                Reason.PINNED if pinned else Reason.PLACEMENT,
                pinned=bool(pinned),
            )
            limits = self.config.client_limits
            upload = (
                paced(request.content, stall=limits.body_timeout, min_rate=limits.body_min_rate)
                if request.method == "POST"
                else None
            )
            return await self.forwarder.forward(request, upload, [target], record, first_byte=None)

        limits = self.config.client_limits
        body = await read_body(
            request,
            self.config.max_body_bytes,
            stall=limits.body_timeout,
            min_rate=limits.body_min_rate,
            hold=hold,
        )
        seen = await peek_body(route, body, request.headers, param, self.config.max_body_bytes)
        forwarded_body = body or None
        # A streamed answer starts with its first token; a non-streamed one only comes when the
        # whole generation is done, so it gets the longer non-streamed bound.
        first_byte = self.config.timeouts.first_byte_for(record.endpoint, seen.stream)
        if kind in (Kind.MODEL, Kind.MODEL_PATH):
            priority = read_priority(request, grant.max_priority if grant else MAX_PRIORITY)
            model = normalize_model(seen.model) if seen.model.strip() else ""
            record.model, record.priority = model, priority
            if grant is not None and not grant.allows_model(model):
                raise grant.refuse_model(model)
            if route.metadata:  # no load, no slot: nothing to queue for or learn from
                targets = await self.selector.for_metadata(request, model, request_id)
                return await self.forwarder.forward(
                    request, forwarded_body, targets, record, first_byte=first_byte
                )
            args = (request.path, seen.payload, model, seen.stream)
            # A large body's analysis runs off the event loop, like its peek.
            profile = await asyncio.to_thread(analyze, *args) if seen.large else analyze(*args)
            record.stream, record.task = seen.stream, profile.task
            if self.warmer is not None:
                self.warmer.note(profile, seen.payload)
            # A large embedding call is spread over the fleet, small ones may share a call.
            answered = await self.embeddings.answer(
                request, body, seen.payload, model, priority, record
            )
            if answered is not None:
                return answered
            routed = await self.selector.for_model(request, profile, request_id, priority)
            if isinstance(routed, Plan):
                return await self._forward_model(
                    request, forwarded_body, routed, profile, record, first_byte
                )
            async with self.admission.admit(
                priority, model, routed.key, routed.nodes, routed.choose
            ) as slot:
                record.admitted, record.queue_s = True, slot.waited_s
                if slot.plan.decision is not None:
                    slot.plan.decision.queue_s = slot.waited_s
                return await self._forward_model(
                    request, forwarded_body, slot.plan, profile, record, first_byte, slot
                )
        if kind in _MANAGEMENT:
            if grant is not None and not grant.allows_model(normalize_model(seen.model)):
                raise grant.refuse_model(seen.model)
            payload = seen.payload or {}
            base = (
                payload.get("from")
                if not (payload.get("files") or payload.get("adapters"))
                else None
            )
            nodes, label = self.selector.for_management(
                request,
                _MANAGEMENT[kind],
                seen.model,
                base if isinstance(base, str) else "",
                request_id,
            )
            record.model = normalize_model(seen.model) if seen.model.strip() else ""
            record.node, record.route = ",".join(n.name for n in nodes), label
            return await self.management.run(request, body, nodes, request_id, label)
        # Fleet views pinned to a node, and every route this proxy does not model: a node answers.
        targets = self.selector.pinned_targets(request) or self.selector.any_node(
            request_id, "not model-specific", Reason.NOT_MODEL_SPECIFIC
        )
        return await self.forwarder.forward(
            request, forwarded_body, targets, record, first_byte=first_byte
        )
