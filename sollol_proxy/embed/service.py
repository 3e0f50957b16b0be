"""What the handler asks of this package for an embedding call: answer it by spreading it over
the fleet or merging it with others, or leave it to the usual path (None)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sollol_proxy.config import Config
from sollol_proxy.embed.coalesce import Coalescer
from sollol_proxy.embed.inputs import read_call
from sollol_proxy.embed.split import should_split
from sollol_proxy.embed.splitter import split_call
from sollol_proxy.embed.subcall import SubCalls
from sollol_proxy.forward.record import RequestRecord
from sollol_proxy.wire.headers import NODE_HEADER


class Embeddings:
    def __init__(self, calls: SubCalls) -> None:
        self.calls = calls
        self.coalescer = Coalescer(calls)

    def reconfigure(self, config: Config) -> None:
        self.calls.reconfigure(config)

    async def answer(
        self,
        request: web.Request,
        body: bytes,
        payload: Mapping[str, Any] | None,
        model: str,
        priority: int,
        record: RequestRecord,
    ) -> web.StreamResponse | None:
        """Answer an embedding call across the fleet; None: forward it as usual."""
        if request.headers.get(NODE_HEADER):
            return None  # pinned by the operator: that node answers it whole
        call = read_call(request.path, payload, request.headers.get("Content-Encoding", ""), body)
        if call is None:
            return None
        policy = self.calls.config.embed
        holders = len(self.calls.fleet.with_model(model))
        if policy.split and should_split(len(call.inputs), holders, policy.split_min_inputs):
            return await split_call(self.calls, request, call, priority, record)
        if policy.coalesce:
            return await self.coalescer.answer(request, call, priority, record)
        return None
