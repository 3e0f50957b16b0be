"""What the selector answers: the nodes to try in order (`Plan`, `Target`), a reason it cannot
(`NoTarget`), or how a waiting request will be placed when a slot frees (`Candidates`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sollol_proxy.fleet.decisions import Decision
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.waiting import Hold
from sollol_proxy.routing import Choice, Reason


class Target:
    """A node to try: `route` (strategy and reason, for X-Sollol-Route) says why, `reason` is
    its bounded category (metrics, the access log), `pinned`: named by the operator, tried even
    when its health says no. A ranked target writes its route when it is first read: only the
    nodes tried are."""

    __slots__ = ("_choice", "_route", "node", "pinned", "reason")

    def __init__(self, node: NodeState, route: str, reason: Reason, pinned: bool = False) -> None:
        self.node = node
        self._route = route
        self._choice: Choice | None = None
        self.reason = reason
        self.pinned = pinned

    @classmethod
    def ranked(cls, node: NodeState, strategy: str, choice: Choice) -> Target:
        target = cls(node, strategy, choice.category)
        target._choice = choice
        return target

    @property
    def route(self) -> str:
        if self._choice is not None:
            self._route = f"{self._route}: {self._choice.reason}"
            self._choice = None
        return self._route


class NoTarget(Exception):
    """No node can take the request; the status and message go back to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Plan:
    """Where a model request goes, and what the proxy believed when it chose; or, with `hold`,
    that it had better wait for a busy slot a little longer (admission keeps it queued)."""

    # In order; a selector's ranking makes each Target when first read (routing/ranking.py).
    targets: Sequence[Target] = field(default_factory=list)
    decision: Decision | None = None
    hold: Hold | None = None


@dataclass(frozen=True)
class Candidates:
    """A model request that waits for a free slot: who may serve it, and how to pick among the
    nodes free when its turn comes (late binding)."""

    key: tuple[str, ...]  # requests with the same key have the same candidates
    nodes: Callable[[], list[NodeState]]
    choose: Callable[[list[NodeState]], Plan]
