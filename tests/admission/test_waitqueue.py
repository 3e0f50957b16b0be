"""The waiting requests' heap, without an event loop: its order is effective priority's at any
time, waiters leave from anywhere, and the counts the bounds read stay exact."""

from __future__ import annotations

import random
from typing import Any

from sollol_proxy.admission.tickets import Waiter
from sollol_proxy.admission.waitqueue import WaitQueue
from sollol_proxy.config import QueueBand, QueueConfig

AGEING = 10.0
LOW_BAND = QueueBand(1, 3, max_length=2)


def waiter(seq: int, priority: int, enqueued: float, *, retry: bool = False) -> Waiter:
    band = LOW_BAND if LOW_BAND.low <= priority <= LOW_BAND.high else None
    slot: Any = object() if retry else None
    key = (f"m{seq % 3}",)
    return Waiter(priority, "m", key, seq, enqueued, list, list, band, None, slot)  # type: ignore[arg-type]


def by_effective(waiters: list[Waiter], now: float, ageing: float = AGEING) -> list[int]:
    """The order the queue must give: effective priority, then arrival."""
    ranked = sorted(waiters, key=lambda w: (-round(w.effective(now, ageing), 9), w.seq))
    return [w.seq for w in ranked]


def test_the_order_is_effective_prioritys_whenever_it_is_read() -> None:
    rng = random.Random(7)
    queue = WaitQueue(AGEING)
    waiters = [waiter(i, rng.randint(0, 10), rng.uniform(0, 100)) for i in range(300)]
    for w in waiters:
        queue.push(w)
    for now in (100.0, 150.0, 1000.0):  # older waiters overtake as time passes, same heap
        assert [w.seq for w in queue.ordered()] == by_effective(waiters, now)


def test_waiters_leave_from_anywhere_even_during_a_walk() -> None:
    rng = random.Random(3)
    queue = WaitQueue(AGEING)
    waiters = [waiter(i, rng.randint(0, 10), rng.uniform(0, 100)) for i in range(200)]
    for w in waiters:
        queue.push(w)
    seen = []
    for w in queue.ordered():
        seen.append(w.seq)
        if w.seq % 2 == 0:  # as a grant does: the one granted, and another further down
            queue.remove(w)
            queue.remove(waiters[(w.seq + 101) % 200])
    assert seen[:5] == by_effective(waiters, 100.0)[:5]
    left = [w for w in waiters if w.queued]
    assert [w.seq for w in queue.ordered()] == by_effective(left, 100.0)
    assert len(queue) == len(left) and sum(queue.keys.values()) == len(left)
    assert sum(queue.depth(range(11)).values()) == len(left)
    for w in left:  # leaving twice changes nothing
        queue.remove(w)
        queue.remove(w)
    assert len(queue) == 0 and not queue.keys and list(queue.ordered()) == []
    queue.push(waiter(500, 5, 1.0))  # the dead entries are dropped as new ones come
    assert [w.seq for w in queue.ordered()] == [500] and len(queue._heap) < 50


def test_a_new_ageing_reorders_the_same_waiters() -> None:
    queue = WaitQueue(AGEING)
    old_low, new_high = waiter(1, 2, 0.0), waiter(2, 5, 20.0)
    queue.push(old_low)
    queue.push(new_high)
    assert [w.seq for w in queue.ordered()] == [2, 1]  # 2 + 2.5 levels of ageing < 5 + 0.5
    queue.rekey(1.0)  # a level per second: 2 + 25 > 5 + 5
    assert [w.seq for w in queue.ordered()] == [1, 2]


def test_oldest_per_priority_counts_only_those_still_waiting() -> None:
    queue = WaitQueue(AGEING)
    first, second, other = waiter(1, 5, 1.0), waiter(2, 5, 2.0), waiter(3, 7, 3.0)
    for w in (first, second, other):
        queue.push(w)
    queue.remove(first)
    assert queue.oldest() == {5: 2.0, 7: 3.0}


def test_fits_counts_the_bounds_without_retries() -> None:
    queue = WaitQueue(AGEING)
    config = QueueConfig(max_length=3, bands=(LOW_BAND,))
    queue.push(waiter(1, 5, 0.0))
    queue.push(waiter(2, 5, 0.0, retry=True))  # a retry counts against no bound
    newcomer = waiter(3, 6, 0.0)
    queue.push(newcomer)
    assert queue.fits(newcomer, config)  # two others counted would still be under 3
    queue.push(waiter(4, 6, 0.0))
    queue.push(waiter(5, 6, 0.0))
    assert not queue.fits(newcomer, config)
    low = waiter(6, 2, 0.0)
    bounded = QueueConfig(max_length=100, bands=(LOW_BAND,))
    queue.push(waiter(7, 1, 0.0))
    queue.push(low)
    assert queue.fits(low, bounded)  # one other in its band, of 2
    queue.push(waiter(8, 3, 0.0))
    assert not queue.fits(low, bounded)
