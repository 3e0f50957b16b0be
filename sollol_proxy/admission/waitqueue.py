"""The waiting requests, most urgent first, in one heap.

A waiter's effective priority is its priority plus one level per `ageing` seconds waited:
`priority + (now - enqueued) / ageing`. Ordering by it, most urgent first, is ordering by
`enqueued - priority * ageing`, smallest first (then by arrival), a key that does not move with
time: the heap stays in order as every waiter ages, nothing is re-sorted when the pump runs, and
only a new `ageing` re-keys it. A waiter that leaves is only marked (`Waiter.queued`) and its
entry dropped when it reaches the top or when the dead outnumber the living, so that the pump
can walk the heap in order while it grants (`ordered`), from the most urgent down, visiting
only as many entries as it goes through.

Counts kept as waiters come and go: per candidate set (`keys`), per priority, and those the
length bounds count (everything but retries), overall and per band.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator

from sollol_proxy.admission.tickets import Waiter
from sollol_proxy.config import QueueConfig

Entry = tuple[float, int, Waiter]  # (the time-invariant key, arrival, the waiter)


class WaitQueue:
    def __init__(self, ageing: float) -> None:
        self._ageing = ageing
        self._heap: list[Entry] = []
        self._dead = 0  # entries of waiters that left, still in the heap
        self.keys: Counter[tuple[str, ...]] = Counter()  # waiters per candidate set
        self._depth: Counter[int] = Counter()  # waiters per priority
        self._counted = 0  # waiters the length bounds count (not retries)
        self._in_band: Counter[int] = Counter()  # id(band) -> counted waiters in it

    def __len__(self) -> int:
        return len(self._heap) - self._dead

    def _entry(self, waiter: Waiter) -> Entry:
        return (waiter.enqueued - waiter.priority * self._ageing, waiter.seq, waiter)

    def push(self, waiter: Waiter) -> None:
        self._tidy()
        heapq.heappush(self._heap, self._entry(waiter))
        waiter.queued = True
        self.keys[waiter.key] += 1
        self._depth[waiter.priority] += 1
        if waiter.slot is None:
            self._counted += 1
            if waiter.band is not None:
                self._in_band[id(waiter.band)] += 1

    def remove(self, waiter: Waiter) -> None:
        """`waiter` leaves the queue (granted, refused, gone); nothing if it already left."""
        if not waiter.queued:
            return
        waiter.queued = False
        self._dead += 1
        self.keys[waiter.key] -= 1
        if not self.keys[waiter.key]:
            del self.keys[waiter.key]
        self._depth[waiter.priority] -= 1
        if waiter.slot is None:
            self._counted -= 1
            if waiter.band is not None:
                self._in_band[id(waiter.band)] -= 1

    def _tidy(self) -> None:
        """Drop the entries of waiters that left: those on top, or all once they are most."""
        heap = self._heap
        if self._dead > len(heap) // 2 + 32:
            self._heap = [entry for entry in heap if entry[2].queued]
            heapq.heapify(self._heap)
            self._dead = 0
            return
        while heap and not heap[0][2].queued:
            heapq.heappop(heap)
            self._dead -= 1

    def rekey(self, ageing: float) -> None:
        """A reload changed `ageing`: the same waiters, ordered by the new rate."""
        if ageing != self._ageing:
            self._ageing = ageing
            self._heap = [self._entry(entry[2]) for entry in self._heap if entry[2].queued]
            heapq.heapify(self._heap)
            self._dead = 0

    def ordered(self) -> Iterator[Waiter]:
        """The waiters most urgent first, lazily: a walk of the heap's tree from the root that
        always expands the smallest entry seen, so k waiters cost O(k log k). Waiters may
        leave meanwhile (they are skipped); none may join until the walk ends."""
        heap = self._heap
        if not heap:
            return
        frontier = [(heap[0], 0)]
        while frontier:
            entry, index = heapq.heappop(frontier)
            if entry[2].queued:
                yield entry[2]
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))

    def live(self) -> list[Waiter]:
        """Every waiter, in no particular order."""
        return [entry[2] for entry in self._heap if entry[2].queued]

    def fits(self, newcomer: Waiter, config: QueueConfig) -> bool:
        """Are the queued waiters other than `newcomer` under every length bound it counts
        against? Then no bound applies (see bounds.py), without a walk of the queue."""
        counted = newcomer.queued and newcomer.slot is None
        if self._counted - counted >= config.max_length:
            return False
        band = newcomer.band
        if band is None or band.max_length is None:
            return True
        return self._in_band[id(band)] - counted < band.max_length

    def depth(self, priorities: range) -> dict[int, int]:
        return {p: self._depth[p] for p in priorities}

    def oldest(self) -> dict[int, float]:
        """Per priority, when its longest-waiting request arrived."""
        oldest: dict[int, float] = {}
        for waiter in self.live():
            if waiter.enqueued < oldest.get(waiter.priority, float("inf")):
                oldest[waiter.priority] = waiter.enqueued
        return oldest
