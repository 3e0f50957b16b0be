"""A ranking's failover list, each entry made when it is first read.

The selector ranks every candidate, but a request reads the first entry or two of its list (the
node it goes to, and whether any other is left to fail over to): making an entry per candidate
per request (about a hundred objects at 100 nodes) paid for entries nobody reads. A `Ranking`
knows how many entries there are and makes entry `i` from `make(i)` on the first read of it,
in order, so an entry is made once and the list reads the same as a list made at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class Ranking(Sequence[T], Generic[T]):
    __slots__ = ("_count", "_made", "_make")

    def __init__(self, count: int, make: Callable[[int], T]) -> None:
        self._count = count
        self._make = make
        self._made: list[T] = []

    def __len__(self) -> int:
        return self._count

    @property
    def made(self) -> int:
        """How many entries were made so far (the first ones)."""
        return len(self._made)

    def _upto(self, stop: int) -> None:
        made, make = self._made, self._make
        for i in range(len(made), min(stop, self._count)):
            made.append(make(i))

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            self._upto(self._count)
            return self._made[index]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("ranking index out of range")
        if index >= len(self._made):
            self._upto(index + 1)
        return self._made[index]

    def __iter__(self) -> Iterator[T]:
        for i in range(self._count):
            yield self[i]

    def __repr__(self) -> str:
        return f"Ranking({self._count} entries, {len(self._made)} made)"
