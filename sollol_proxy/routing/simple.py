"""The simple strategies: for comparison, and for users who want exactly this behaviour."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import ClassVar

from sollol_proxy.routing.types import Choice, NodeView, Reason, RouteRequest


class RoundRobin:
    """Each request to the next candidate in turn, whatever it is doing."""

    name: ClassVar[str] = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def rank(self, request: RouteRequest, candidates: Sequence[NodeView]) -> list[Choice]:
        if not candidates:
            return []
        ordered = sorted(candidates, key=lambda view: view.name)
        start = next(self._counter) % len(ordered)
        rotated = ordered[start:] + ordered[:start]
        return [
            Choice(view.name, f"turn {start + 1} of {len(ordered)}", Reason.ROUND_ROBIN)
            for view in rotated
        ]


class Random:
    """A uniformly random order (seeded, so that a benchmark run is repeatable)."""

    name: ClassVar[str] = "random"

    def __init__(self, seed: int | None = 0) -> None:
        self._random = random.Random(seed)

    def rank(self, request: RouteRequest, candidates: Sequence[NodeView]) -> list[Choice]:
        shuffled = list(candidates)
        self._random.shuffle(shuffled)
        return [Choice(view.name, "random pick", Reason.RANDOM) for view in shuffled]
