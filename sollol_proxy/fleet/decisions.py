"""The most recent routing decisions, kept for GET /sollol/decisions and the dashboard.

A decision is kept in a ring of `keep` as what was decided, in plain values (a tuple per
candidate: its view's and estimate's fields, its reason or what to write it from), and written
out as JSON only when someone reads it: a request pays for a few tuples, not for a document,
and nothing it keeps is walked by the garbage collector.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from sollol_proxy.routing import Choice, Estimate, NodeView, Reason
from sollol_proxy.routing.analysis import RequestProfile
from sollol_proxy.routing.performance import Described, describe

# One candidate, in plain values only (the estimate's as a plain tuple: the collector stops
# tracking a tuple of plain values, not a named one), so the decisions kept cost it nothing,
# where objects kept for every candidate would be walked at every full collection. (node, category, reason or "" when
# `describe` writes it from the rest, what it was compared with, whether the request
# generates, the view's resident, options_match, loading, cached_tokens, displaced_tokens,
# in_flight, num_parallel and success, the estimate or None)
Compact = tuple[Any, ...]
_VALUES = {reason: reason.value for reason in Reason}


def _compact(choice: Choice, v: NodeView) -> Compact:
    if isinstance(choice, Described):
        reason, compared, generates = choice.written, choice.compared, choice.generates
    else:
        reason, compared, generates = choice.reason, None, True
    return (
        choice.node,
        _VALUES[choice.category],
        reason,
        compared,
        generates,
        v.resident,
        v.options_match,
        v.loading,
        v.cached_tokens,
        v.displaced_tokens,
        v.in_flight,
        v.num_parallel,
        v.success,
        None
        if (e := choice.estimate) is None
        else (e.total, e.wait, e.load, e.evict, e.prefill, e.decode),
    )


def _entry(compact: Compact) -> dict[str, Any]:
    """One candidate of a decision, as /sollol/decisions shows it."""
    node, category, reason, compared, generates, *shown, values = compact
    est = None if values is None else Estimate(*values)
    resident, options_match, loading, cached, displaced, in_flight, slots, success = shown
    view = NodeView(
        node,
        in_flight,
        slots,
        resident,
        options_match=options_match,
        cached_tokens=cached,
        loading=loading,
        success=success,
        displaced_tokens=displaced,
    )
    if not reason and est is not None:
        reason = describe(view, est, compared, generates)
    return candidate_entry(Choice(node, reason, Reason(category), est), view)


class Decision:
    """One routing decision; `served_by` and `queue_s` are filled in later."""

    __slots__ = (
        "candidates",
        "expected_output",
        "priority",
        "profile",
        "queue_s",
        "request_id",
        "served_by",
        "strategy",
        "time",
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
        # What is shown of the request (not the profile itself, which holds its prefix keys).
        self.profile = (
            profile.model,
            profile.endpoint,
            profile.task,
            profile.complexity,
            profile.prompt_tokens,
            profile.stream,
        )
        self.priority = priority
        self.strategy = strategy
        self.expected_output = expected_output
        if all(isinstance(c, Described) for c in choices):
            self.candidates = tuple(_compact(c, c.view) for c in choices)  # type: ignore[attr-defined]
        else:
            by_view = {v.name: v for v in views}
            self.candidates = tuple(_compact(c, by_view[c.node]) for c in choices)
        self.served_by: str | None = None
        self.queue_s: float | None = None  # how long it waited in the queue, when it did

    def to_json(self) -> dict[str, Any]:
        """As /sollol/decisions shows it."""
        model, endpoint, task, complexity, prompt_tokens, stream = self.profile
        candidates = [_entry(c) for c in self.candidates]
        first = candidates[0] if candidates else None
        entry = {
            "request_id": self.request_id,
            "time": self.time,
            "model": model,
            "endpoint": endpoint,
            "task": task,
            "complexity": complexity,
            "prompt_tokens": prompt_tokens,
            "expected_output_tokens": round(self.expected_output),
            "stream": stream,
            "priority": self.priority,
            "strategy": self.strategy,
            "node": first["node"] if first else None,
            "served_by": self.served_by,
            "reason": first["reason"] if first else "",
            "category": first["category"] if first else "",
            "candidates": candidates,
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
