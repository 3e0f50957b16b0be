"""The queue's length bounds, without an event loop: who is shed, who is refused."""

from __future__ import annotations

from typing import Any

from sollol_proxy.admission.bounds import over_bounds
from sollol_proxy.admission.tickets import Waiter
from sollol_proxy.config import QueueBand, QueueConfig

LOW_BAND = QueueBand(1, 3, max_length=1)


def waiter(seq: int, priority: int, *, retry: bool = False, enqueued: float = 0.0) -> Waiter:
    band = LOW_BAND if LOW_BAND.low <= priority <= LOW_BAND.high else None
    slot: Any = object() if retry else None
    return Waiter(priority, "m", ("m",), seq, enqueued, list, list, band, None, slot)  # type: ignore[arg-type]


def outcome(config: QueueConfig, newcomer: Waiter, others: list[Waiter]) -> list[Any]:
    return [
        (victim.seq if victim else None, error.reason)
        for victim, error in over_bounds(config, newcomer, others, now=0.0)
    ]


def test_a_newcomer_that_fits_changes_nothing() -> None:
    assert outcome(QueueConfig(max_length=2), waiter(9, 5), [waiter(1, 5)]) == []


def test_the_least_urgent_youngest_waiter_is_shed_for_a_more_urgent_newcomer() -> None:
    others = [waiter(1, 4), waiter(2, 6), waiter(3, 4)]
    assert outcome(QueueConfig(max_length=3), waiter(9, 8), others) == [(3, "shed")]


def test_a_newcomer_no_more_urgent_than_anyone_is_refused() -> None:
    others = [waiter(1, 5), waiter(2, 6)]
    assert outcome(QueueConfig(max_length=2), waiter(9, 5), others) == [(None, "full")]


def test_retries_neither_count_nor_are_shed() -> None:
    others = [waiter(1, 1, retry=True), waiter(2, 1, retry=True), waiter(3, 4)]
    assert outcome(QueueConfig(max_length=2), waiter(9, 8), others) == []
    assert outcome(QueueConfig(max_length=1), waiter(9, 8), others) == [(3, "shed")]


def test_a_band_bound_sheds_inside_the_band_only() -> None:
    config = QueueConfig(max_length=10, bands=(LOW_BAND,))
    others = [waiter(1, 2), waiter(2, 9)]
    assert outcome(config, waiter(9, 3), others) == [(1, "shed")]
    assert outcome(config, waiter(9, 2), others) == [(None, "full")]


def test_ageing_counts_in_who_is_least_urgent() -> None:
    # One level per 10 s: the priority-2 request that has waited 60 s counts as 8.
    others = [waiter(1, 2, enqueued=-60.0), waiter(2, 5)]
    assert outcome(QueueConfig(max_length=2, ageing=10), waiter(9, 7), others) == [(2, "shed")]
