"""What `async with admission.admit(...)` holds with Redis on: the local slot, then the lease
(`slots.SharedSlots.acquire`); a plain class, no generator per request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sollol_proxy.admission.gate import LocalAdmit
from sollol_proxy.admission.tickets import Held, Slot
from sollol_proxy.fleet.node import NodeState

# SharedSlots.acquire: the local admission, priority, model and candidate nodes in; the slot
# with its lease, and what gives both back, out.
Acquire = Callable[
    [LocalAdmit, int, str, Callable[[], list[NodeState]]], Awaitable[tuple[Slot, Held]]
]


class SharedHeld:
    """`async with admission.admit(...)` with Redis on: the local slot, then the lease."""

    __slots__ = ("_acquire", "_candidates", "_local", "_model", "_priority", "held")

    def __init__(
        self,
        acquire: Acquire,
        local: LocalAdmit,
        priority: int,
        model: str,
        candidates: Callable[[], list[NodeState]],
    ) -> None:
        self._acquire = acquire
        self._local = local
        self._priority = priority
        self._model = model
        self._candidates = candidates
        self.held: Held | None = None

    async def __aenter__(self) -> Slot:
        slot, self.held = await self._acquire(
            self._local, self._priority, self._model, self._candidates
        )
        return slot

    async def __aexit__(self, *exc_info: object) -> None:
        if self.held is not None:  # its lease is given back with the slot (`give`)
            await self.held.__aexit__(*exc_info)
