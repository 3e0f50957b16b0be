"""Slots reserved between a request's choice of node and its dispatch (prompt_cache.py).

The slot is taken when the request is given its node, so that the requests ranked in the
meantime do not count on it; the dispatch claims it by the same prefix-keys object. One never
claimed (the client went away in between) is given back after `RESERVATION_S`, the oldest first
(every reservation lasts as long), with no walk of them all per request.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

from sollol_proxy.routing.slot_match import PrefixKeys

RESERVATION_S = 5.0

T = TypeVar("T")


class Reservations(Generic[T]):
    def __init__(self) -> None:
        # id(keys) -> (the reserved ticket, the keys: kept so that no other object takes their id)
        self._held: dict[int, tuple[T, PrefixKeys]] = {}
        # In the order made, so in the order they run out: (until, id(keys), ticket). A claimed
        # one stays until it runs out or none is held, and is then passed over.
        self._expiring: deque[tuple[float, int, T]] = deque()

    def __len__(self) -> int:
        """Entries kept to run reservations out in order, claimed ones included."""
        return len(self._expiring)

    def hold(self, keys: PrefixKeys, ticket: T, now: float) -> None:
        self._held[id(keys)] = (ticket, keys)
        self._expiring.append((now + RESERVATION_S, id(keys), ticket))

    def claim(self, keys: PrefixKeys) -> T | None:
        """The ticket reserved for `keys`, no longer reserved; None if there is none."""
        held = self._held.pop(id(keys), None)
        return None if held is None else held[0]

    def expired(self, now: float) -> list[T]:
        """The tickets whose reservation ran out unclaimed, no longer reserved."""
        expiring, held = self._expiring, self._held
        if not held:
            expiring.clear()  # every one left was claimed
            return []
        out: list[T] = []
        while expiring and expiring[0][0] <= now:
            _, key, ticket = expiring.popleft()
            kept = held.get(key)
            if kept is not None and kept[0] is ticket:  # not claimed, nor another's since
                del held[key]
                out.append(ticket)
        return out
