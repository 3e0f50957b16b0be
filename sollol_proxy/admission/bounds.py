"""The queue's length bounds: who gives way when a newcomer has to wait and the queue is full.

Pure: the waiting requests in, what to do out. A retry (a request admitted already, waiting for a
slot elsewhere) neither counts against a bound nor is ever shed.
"""

from __future__ import annotations

from collections.abc import Iterator

from sollol_proxy.admission.tickets import QueueRejected, Waiter
from sollol_proxy.config import QueueConfig


def over_bounds(
    config: QueueConfig, newcomer: Waiter, others: list[Waiter], now: float
) -> Iterator[tuple[Waiter | None, QueueRejected]]:
    """For each bound the newcomer would exceed: (a less urgent waiter to shed, the error it
    gets), or (None, the error the newcomer gets). Nothing when it fits."""
    counted = [w for w in others if w.slot is None]
    bounds = [(config.max_length, counted, "")]
    band = newcomer.band
    if band is not None and band.max_length is not None:
        in_band = [w for w in counted if w.band is band]
        bounds.append((band.max_length, in_band, f" at priority {band.label}"))
    shed: set[int] = set()
    for limit, members, scope in bounds:
        members = [w for w in members if w.seq not in shed]
        if len(members) < limit:
            continue
        victim = min(members, key=lambda w: (w.effective(now, config.ageing), -w.seq), default=None)
        if victim is None or victim.effective(now, config.ageing) >= newcomer.priority:
            yield None, _refusal(newcomer, limit, scope)
            return
        shed.add(victim.seq)
        yield (
            victim,
            QueueRejected(
                f"sollol-proxy: shed from the full queue ({limit} requests waiting{scope}) for a "
                f"more urgent request (priority {newcomer.priority} over {victim.priority}); "
                "retry later",
                "shed",
                now - victim.enqueued,
            ),
        )


def _refusal(newcomer: Waiter, limit: int, scope: str) -> QueueRejected:
    if limit == 0:
        return QueueRejected(
            f"sollol-proxy: no free slot for model '{newcomer.model}' and the queue holds no "
            f"request{scope} (max_length 0); retry later",
            "full",
        )
    return QueueRejected(
        f"sollol-proxy: the queue is full ({limit} requests waiting{scope}) and this request "
        f"(priority {newcomer.priority}) is not more urgent than any of them; retry later",
        "full",
    )


def timed_out(waiter: Waiter, max_wait: float, now: float) -> QueueRejected:
    """The error of a waiter whose maximum wait is over with no slot for it."""
    return QueueRejected(
        f"sollol-proxy: no free slot for model '{waiter.model}' within "
        f"{max_wait:g}s (priority {waiter.priority}); the fleet is at capacity",
        "timeout",
        now - waiter.enqueued,
    )
