"""The most recent routing decisions, kept for GET /sollol/decisions."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from sollol_proxy.routing import Choice, NodeView
from sollol_proxy.routing.analysis import RequestProfile


class DecisionLog:
    def __init__(self, keep: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=keep)

    def resize(self, keep: int) -> None:
        self._entries = deque(self._entries, maxlen=keep)

    def add(self, decision: dict[str, Any]) -> None:
        if self._entries.maxlen:
            self._entries.append(decision)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """Newest first."""
        entries = list(self._entries)[-limit:] if limit > 0 else []
        return entries[::-1]


def candidate_entry(choice: Choice, view: NodeView) -> dict[str, Any]:
    """One candidate of a decision, as /sollol/decisions shows it."""
    entry: dict[str, Any] = {
        "node": choice.node,
        "reason": choice.reason,
        "category": choice.category.value,
        "resident": view.resident,
        "cached_tokens": view.cached_tokens,
        "displaced_tokens": round(view.displaced_tokens),
        "in_flight": view.in_flight,
        "slots": view.num_parallel,
    }
    if choice.estimate is not None:
        est = choice.estimate
        entry["estimate_s"] = {
            "total": round(est.total, 4),
            "wait": round(est.wait, 4),
            "load": round(est.load, 4),
            "evict": round(est.evict, 4),
            "prefill": round(est.prefill, 4),
            "decode": round(est.decode, 4),
        }
    return entry


def decision_entry(
    request_id: str,
    profile: RequestProfile,
    priority: int,
    strategy: str,
    expected_output: float,
    choices: Sequence[Choice],
    views: Sequence[NodeView],
) -> dict[str, Any]:
    """One routing decision, as /sollol/decisions shows it (`served_by` is filled in later)."""
    by_view = {v.name: v for v in views}
    return {
        "request_id": request_id,
        "time": time.time(),
        "model": profile.model,
        "endpoint": profile.endpoint,
        "task": profile.task,
        "complexity": profile.complexity,
        "prompt_tokens": profile.prompt_tokens,
        "expected_output_tokens": round(expected_output),
        "stream": profile.stream,
        "priority": priority,
        "strategy": strategy,
        "node": choices[0].node if choices else None,
        "served_by": None,
        "reason": choices[0].reason if choices else "",
        "category": choices[0].category.value if choices else "",
        "candidates": [candidate_entry(c, by_view[c.node]) for c in choices],
    }
