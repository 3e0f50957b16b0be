"""The most recent routing decisions, kept for GET /sollol/decisions and the dashboard.

A decision is kept in a ring of `keep` as what was decided, in plain values (one flat tuple of
each candidate's view's and estimate's fields, its reason or what to write it from), and written
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

# The candidates of a decision, in plain values only, one after another in a single flat
# tuple (STRIDE values each): the collector stops tracking a tuple of plain values, and a
# single one per decision is a single object allocated, where one per candidate (and one per
# estimate) made the young generation fill and be collected about once per request of a
# 100-node fleet while the ring filled. Each candidate is: node, category, reason or "" when
# `describe` writes it from the rest, what it was compared with, whether the request
# generates, the view's resident, options_match, loading, cached_tokens, displaced_tokens,
# in_flight, num_parallel and success, then the estimate's six fields (None for each when
# there is none).
Compact = tuple[Any, ...]
STRIDE = 19
_VALUES = {reason: reason.value for reason in Reason}
_NO_ESTIMATE = (None,) * len(Estimate._fields)


def _compact(choices: Sequence[Choice], views: Sequence[NodeView]) -> Compact:
    flat: list[Any] = []
    extend = flat.extend
    by_view = None
    for choice in choices:
        if isinstance(choice, Described):
            v = choice.view
            reason, compared, generates = choice.written, choice.compared, choice.generates
        else:
            if by_view is None:
                by_view = {v.name: v for v in views}
            v = by_view[choice.node]
            reason, compared, generates = choice.reason, None, True
        extend(
            (
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
            )
        )
        extend(_NO_ESTIMATE if (e := choice.estimate) is None else e)
    return tuple(flat)


def _entry(compact: Compact) -> dict[str, Any]:
    """One candidate of a decision (its STRIDE values), as /sollol/decisions shows it."""
    node, category, reason, compared, generates, *shown = compact[:13]
    values = compact[13:]
    est = None if values[0] is None else Estimate(*values)
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
        "others",
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
        others: tuple[str, ...] = (),
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
        self.candidates = _compact(choices, views)
        # The candidates after the top, by name only, in the order failover tries them
        # (performance prices only the top exactly: fleet/pricing.py).
        self.others = others
        self.served_by: str | None = None
        self.queue_s: float | None = None  # how long it waited in the queue, when it did

    def to_json(self) -> dict[str, Any]:
        """As /sollol/decisions shows it."""
        model, endpoint, task, complexity, prompt_tokens, stream = self.profile
        flat = self.candidates
        candidates = [_entry(flat[i : i + STRIDE]) for i in range(0, len(flat), STRIDE)]
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
            "others": list(self.others),
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
