"""What the priority queue has done, per priority: counts and recent waits."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sollol_proxy.config import QueueConfig

if TYPE_CHECKING:
    from sollol_proxy.admission.tickets import Waiter

RECENT_WAITS = 1000  # waits kept per priority for the percentiles


@dataclass
class PriorityStats:
    admitted: int = 0
    queued: int = 0  # admitted after waiting
    timed_out: int = 0
    rejected: int = 0  # the queue (or the band) was full
    shed: int = 0  # made room for a more urgent request
    left: int = 0  # the client went away while waiting
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_WAITS))


def queue_snapshot(
    config: QueueConfig,
    stats: dict[int, PriorityStats],
    depth: dict[int, int],
    oldest: dict[int, float],
    now: float,
) -> dict[str, Any]:
    by_priority: dict[str, Any] = {}
    for priority, counts in stats.items():
        waits = sorted(counts.waits)
        by_priority[str(priority)] = {
            "waiting": depth[priority],
            "oldest_wait_s": round(now - oldest[priority], 3) if priority in oldest else 0.0,
            "admitted": counts.admitted,
            "queued": counts.queued,
            "wait_p50_s": _percentile(waits, 0.50),
            "wait_p95_s": _percentile(waits, 0.95),
            "timed_out": counts.timed_out,
            "rejected": counts.rejected,
            "shed": counts.shed,
            "left": counts.left,
        }
    return {
        "enabled": config.enabled,
        "max_length": config.max_length,
        "max_wait_s": config.max_wait,
        "ageing_s_per_level": config.ageing,
        "by_priority": by_priority,
    }


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def next_waiters(waiters: Iterable[Waiter], now: float, ageing: float) -> list[dict[str, Any]]:
    """The waiting requests GET /sollol/queue lists, in the order they will be served."""
    return [
        {
            "model": w.model,
            "priority": w.priority,
            "effective_priority": round(w.effective(now, ageing), 2),
            "waited_s": round(now - w.enqueued, 3),
        }
        for w in waiters
    ]
