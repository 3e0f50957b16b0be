"""Cutting N inputs into sub-batches for the nodes that hold the model (pure).

The first round goes to the nodes that have a free slot when the call starts: together they
get `FIRST_ROUND` of the inputs, each in proportion to its learned speed, so that they finish
together. What is left is handed out as nodes come free (guided self-scheduling: each takes a
share of what remains, so the pieces shrink towards the end and a node slower than expected,
or busy with other work, holds up little). A sub-batch whose node failed goes back to the front
and is handed out again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

# Share of the inputs handed out at once, by learned speed; the rest balances the estimates'
# errors and the nodes that were busy at the start.
FIRST_ROUND = 0.75
# A later sub-batch is this share of a node's fair part of what remains.
GUIDED = 0.5


def should_split(inputs: int, holders: int, min_inputs: int) -> bool:
    """Worth cutting: enough inputs, and more than one node to spread them over."""
    return holders >= 2 and inputs >= min_inputs


class Partition:
    """The inputs 0..total-1 of one call, handed out as ranges to the nodes that ask."""

    def __init__(
        self,
        total: int,
        speeds: Mapping[str, float],
        free: frozenset[str],
        min_batch: int,
        max_batch: int,
    ) -> None:
        self._min, self._max = min_batch, max_batch
        self._pool: deque[range] = deque([range(total)]) if total else deque()
        known = [s for s in speeds.values() if s > 0]
        fallback = sum(known) / len(known) if known else 1.0
        self._speed = {n: s if s > 0 else fallback for n, s in speeds.items()}
        self._fleet = sum(self._speed.values()) or 1.0
        free_speed = sum(self._speed.get(n, fallback) for n in free) or 1.0
        self._first = {
            n: math.ceil(total * FIRST_ROUND * self._speed.get(n, fallback) / free_speed)
            for n in free
        }
        self._fallback = fallback

    @property
    def left(self) -> int:
        return sum(len(r) for r in self._pool)

    def size_for(self, node: str) -> int:
        """How many inputs `node` takes next (before clamping to what is left)."""
        first = self._first.pop(node, None)
        if first is not None:
            size = first
        else:
            share = self._speed.get(node, self._fallback) / self._fleet
            size = math.ceil(self.left * share * GUIDED)
        return max(self._min, min(self._max, size))

    def take(self, node: str) -> range | None:
        """The next sub-batch for `node` (contiguous inputs), or None when all are handed out."""
        if not self._pool:
            return None
        size = self.size_for(node)
        front = self._pool.popleft()
        if size < len(front):
            self._pool.appendleft(front[size:])
            front = front[:size]
        return front

    def give_back(self, span: range) -> None:
        """A sub-batch that failed: it is handed out again first."""
        if span:
            self._pool.appendleft(span)


def job_batch_size(
    rate: float, fleet_rate: float, left: int, min_batch: int, max_batch: int, target_s: float
) -> int:
    """Documents of a batch job for a node that embeds `rate` documents/s (0: not measured),
    in a fleet that embeds `fleet_rate`: about `target_s` of its work, less towards the end of
    the job (its fair part of what is left), between `min_batch` and `max_batch`."""
    size = math.ceil(rate * target_s) if rate > 0 else min_batch
    if rate > 0 and fleet_rate > 0:
        size = min(size, math.ceil(left * rate / fleet_rate * GUIDED))
    return max(min_batch, min(max_batch, size))
