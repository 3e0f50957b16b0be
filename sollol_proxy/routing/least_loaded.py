"""Least-loaded: a free slot for the model first, then a node that already holds it, then the
emptiest node. Slots are per loaded model (OLLAMA_NUM_PARALLEL), so a node busy with other
models still has free slots for this one."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import ClassVar

from sollol_proxy.routing.types import Choice, NodeView, Reason, RouteRequest


class LeastLoaded:
    name: ClassVar[str] = "least_loaded"

    def rank(self, request: RouteRequest, candidates: Sequence[NodeView]) -> list[Choice]:
        def key(node: NodeView) -> tuple[bool, bool, float, int]:
            saturated = node.model_in_flight >= node.num_parallel
            # Equal nodes are ordered by a per-request hash so that ties spread over the fleet
            # instead of always landing on the first configured node.
            tiebreak = zlib.crc32(f"{request.request_id}/{node.name}".encode())
            return saturated, not node.resident, node.in_flight / node.num_parallel, tiebreak

        ranked = sorted(candidates, key=key)
        return [Choice(node.name, _reason(node), Reason.LEAST_LOADED) for node in ranked]


def _reason(node: NodeView) -> str:
    residency = "resident" if node.resident else "not loaded"
    return f"{residency}, {node.model_in_flight}/{node.num_parallel} slots busy"
