"""What the selector answers: the nodes to try in order (`Plan`, `Target`), a reason it cannot
(`NoTarget`), or how a waiting request will be placed when a slot frees (`Candidates`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.waiting import Hold
from sollol_proxy.routing import Reason


@dataclass(frozen=True, slots=True)
class Target:
    node: NodeState
    route: str  # strategy and reason, for X-Sollol-Route
    reason: Reason  # the bounded category of `route`, for metrics and the access log
    pinned: bool = False  # named by the operator: tried even when its health says no


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

    targets: list[Target] = field(default_factory=list)
    decision: dict[str, Any] | None = None
    hold: Hold | None = None


@dataclass(frozen=True)
class Candidates:
    """A model request that waits for a free slot: who may serve it, and how to pick among the
    nodes free when its turn comes (late binding)."""

    key: tuple[str, ...]  # requests with the same key have the same candidates
    nodes: Callable[[], list[NodeState]]
    choose: Callable[[list[NodeState]], Plan]
