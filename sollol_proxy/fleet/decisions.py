"""The most recent routing decisions, kept for GET /sollol/decisions."""

from __future__ import annotations

from collections import deque
from typing import Any

from sollol_proxy.routing import Choice, NodeView


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
