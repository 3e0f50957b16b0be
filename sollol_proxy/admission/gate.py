"""What admission control asks of a gate in front of it (state shared by replicas in Redis:
`shared/slots.py`); without one, nothing changes. The gate wraps the local acquisition, which
it is handed with the candidate nodes it allows, and may refuse a slot the local table grants;
it is told when a slot is given back."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from sollol_proxy.admission.tickets import Held, Slot
from sollol_proxy.fleet.node import NodeState

# The local acquisition, given the candidates to choose among and, for a request asking again,
# when it first asked (time.monotonic()), so that it keeps its place in the local queue; and
# whether it skips the local queue and table (the gate holds a slot for it on the candidates).
LocalAdmit = Callable[[Callable[[], list[NodeState]], float | None, bool], Held]


class NotPlaced(Exception):
    """A request the gate holds a slot for (`jump`) could not take it at once (the node left
    its candidates, or its plan would hold it for another node): the gate gives that slot back
    rather than hold it while the request waits in the queue."""


class Gate(Protocol):
    def admit(
        self,
        local: LocalAdmit,
        priority: int,
        model: str,
        candidates: Callable[[], list[NodeState]],
    ) -> AbstractAsyncContextManager[Slot]: ...

    def give(self, node: NodeState, model: str, slot: Slot) -> None:
        """A slot is given back on `node` (its last byte, or a move): its lease there goes
        with it, if it holds one (`Slot.lease`)."""

    def reserved(self, node: NodeState, model: str) -> bool:
        """A slot of `node` that the other replicas gave this one waits to be taken here: the
        node is free for `model` whatever this replica's own table says (its slots are the
        fleet's, shared; the gate's bound holds)."""
