"""The one entry point for every Ollama route: classify, peek, pick nodes, hand over."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

import sollol_proxy.forward.views as views
from sollol_proxy.admission.admission import Admission
from sollol_proxy.admission.priority import BadPriority, read_priority
from sollol_proxy.admission.tickets import QueueRejected, Slot
from sollol_proxy.config import Config
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.fleet.selector import NoTarget, Plan, Selector, Target
from sollol_proxy.forward.attempt import DispatchObserver
from sollol_proxy.forward.forwarder import Forwarder
from sollol_proxy.forward.management import Management
from sollol_proxy.forward.record import Outcome, RecordSink, RequestRecord
from sollol_proxy.forward.upstream import client_ip
from sollol_proxy.lifecycle.drain import is_cut
from sollol_proxy.observe.admin import Admin
from sollol_proxy.routing import Reason
from sollol_proxy.routing.analysis import RequestProfile, analyze
from sollol_proxy.wire.errors import error_response
from sollol_proxy.wire.headers import NODE_HEADER, QUEUE_HEADER, REQUEST_ID_HEADER
from sollol_proxy.wire.names import normalize_model
from sollol_proxy.wire.peek import BodyTooLarge, peek, read_body
from sollol_proxy.wire.routes import Kind, classify, endpoint_label

_MANAGEMENT = {
    Kind.PULL: "pull",
    Kind.PUSH: "push",
    Kind.DELETE: "delete",
    Kind.COPY: "copy",
    Kind.CREATE: "create",
}


# What a 503 from the queue suggests: long enough for a few generations to finish.
RETRY_AFTER_S = 5


def new_request_id() -> str:
    return secrets.token_hex(8)


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
    sinks: Sequence[RecordSink]

    def reconfigure(self, config: Config) -> None:
        self.config = config

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        record = RequestRecord(
            new_request_id(), request.method, endpoint_label(request.path), client_ip(request)
        )
        try:
            try:
                response = await self._dispatch(request, record)
            except NoTarget as exc:
                response = error_response(request.path, exc.status, exc.message)
            except BodyTooLarge as exc:
                response = error_response(request.path, 413, str(exc))
            except BadPriority as exc:
                response = error_response(request.path, 400, str(exc))
            except QueueRejected as exc:
                response = error_response(request.path, exc.status, exc.message)
                response.headers["Retry-After"] = str(RETRY_AFTER_S)
                record.queue_s = exc.waited_s
                response.headers[QUEUE_HEADER] = f"{exc.waited_s * 1000:.0f}"
        except asyncio.CancelledError as exc:
            if is_cut(exc):  # the shutdown's grace period ended: the drain answers 503
                record.outcome = Outcome.CUT_BY_SHUTDOWN
                record.finish(503)
            else:
                record.outcome = Outcome.CLIENT_CLOSED
                record.finish(499)  # nginx's "client closed request": no answer was completed
            self._done(record)
            raise
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
            record.strategy = plan.decision["strategy"]
        return await self.forwarder.forward(
            request, body, plan.targets, record, observer, first_byte=first_byte, slot=slot
        )

    async def _dispatch(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        request_id = record.request_id
        # aiohttp resolves `..` and `//` in request.path; Ollama redirects those, so an unclean
        # path goes to a node untouched instead of matching a fleet view.
        raw = request.raw_path.split("?", 1)[0]
        route, param = classify(request.method, request.path if raw == request.path else raw)
        kind = route.kind
        pinned = request.headers.get(NODE_HEADER)
        if kind is Kind.ROOT:
            return views.root()
        if kind is Kind.SOLLOL:
            return self.admin.handle(request)
        if kind in (Kind.VERSION, Kind.TAGS, Kind.PS, Kind.V1_MODELS) and not pinned:
            if kind is Kind.PS:
                await self.fleet.refresh_residency()
            nodes = list(self.fleet.nodes.values())
            return {
                Kind.VERSION: views.version,
                Kind.TAGS: views.tags,
                Kind.PS: views.ps,
                Kind.V1_MODELS: views.v1_models,
            }[kind](nodes)
        if kind is Kind.BLOB:
            # Uploads can be gigabytes: streamed straight through, never held (so no failover).
            targets = self.selector.pinned(request, allow_all=False) or [self.selector.placement()]
            target = Target(
                targets[0],
                "blob: " + ("pinned" if pinned else "placement node (first healthy node)"),
                Reason.PINNED if pinned else Reason.PLACEMENT,
                pinned=bool(pinned),
            )
            upload = request.content if request.method == "POST" else None
            return await self.forwarder.forward(request, upload, [target], record, first_byte=None)

        body = await read_body(request, self.config.max_body_bytes)
        seen = peek(route, body, request.headers, param)
        forwarded_body = body or None
        # A streamed answer starts with its first token; a non-streamed one only comes when the
        # whole generation is done, so it gets the longer non-streamed bound.
        first_byte = self.config.timeouts.first_byte_for(record.endpoint, seen.stream)
        if kind in (Kind.MODEL, Kind.MODEL_PATH):
            priority = read_priority(request)
            model = normalize_model(seen.model) if seen.model.strip() else ""
            record.model, record.priority = model, priority
            profile = analyze(request.path, seen.payload, model, seen.stream)
            record.stream, record.task = seen.stream, profile.task
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
                    slot.plan.decision["queue_s"] = round(slot.waited_s, 4)
                return await self._forward_model(
                    request, forwarded_body, slot.plan, profile, record, first_byte, slot
                )
        if kind in _MANAGEMENT:
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
