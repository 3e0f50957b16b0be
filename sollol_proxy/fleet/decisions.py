"""The most recent routing decisions, kept for GET /sollol/decisions and the dashboard.

A decision is kept as what was decided (the request's profile, the ranked choices, the views
they were ranked on: objects the selection made anyway) in a ring of `keep`, and written out as
JSON only when someone reads it: a request pays for a reference, not for a document.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from sollol_proxy.routing import Choice, NodeView
from sollol_proxy.routing.analysis import RequestProfile


class Decision:
    """One routing decision; `served_by` and `queue_s` are filled in later."""

    __slots__ = (
        "choices",
        "expected_output",
        "priority",
        "profile",
        "queue_s",
        "request_id",
        "served_by",
        "strategy",
        "time",
        "views",
    )

    def __init__(
        self,
        request_id: str,
        profile: RequestProfile,
        priority: int,
        strategy: str,
        expected_output: float,
        choices: Sequence[Choice],
        views: Sequence[NodeView],
    ) -> None:
        self.request_id = request_id
        self.time = time.time()
        self.profile = profile
        self.priority = priority
        self.strategy = strategy
        self.expected_output = expected_output
        self.choices = choices
        self.views = views
        self.served_by: str | None = None
        self.queue_s: float | None = None  # how long it waited in the queue, when it did

    def to_json(self) -> dict[str, Any]:
        """As /sollol/decisions shows it."""
        profile, choices = self.profile, self.choices
        by_view = {v.name: v for v in self.views}
        entry = {
            "request_id": self.request_id,
            "time": self.time,
            "model": profile.model,
            "endpoint": profile.endpoint,
            "task": profile.task,
            "complexity": profile.complexity,
            "prompt_tokens": profile.prompt_tokens,
            "expected_output_tokens": round(self.expected_output),
            "stream": profile.stream,
            "priority": self.priority,
            "strategy": self.strategy,
            "node": choices[0].node if choices else None,
            "served_by": self.served_by,
            "reason": choices[0].reason if choices else "",
            "category": choices[0].category.value if choices else "",
            "candidates": [candidate_entry(c, by_view[c.node]) for c in choices],
        }
        if self.queue_s is not None:
            entry["queue_s"] = round(self.queue_s, 4)
        return entry


class DecisionLog:
    def __init__(self, keep: int) -> None:
        self._entries: deque[Decision] = deque(maxlen=keep)

    def resize(self, keep: int) -> None:
        self._entries = deque(self._entries, maxlen=keep)

    def add(self, decision: Decision) -> None:
        if self._entries.maxlen:
            self._entries.append(decision)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """Newest first, as JSON."""
        entries = list(self._entries)[-limit:] if limit > 0 else []
        return [decision.to_json() for decision in reversed(entries)]


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
