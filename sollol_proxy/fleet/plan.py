"""What the selector answers: the nodes to try in order (`Plan`, `Target`), a reason it cannot
(`NoTarget`), or how a waiting request will be placed when a slot frees (`Candidates`); the
failover list of a ranking (`failover`) and of the least loaded nodes (`least_loaded`)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sollol_proxy.fleet.capacity import believed_total
from sollol_proxy.fleet.decisions import Decision
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.views import Kept
from sollol_proxy.fleet.waiting import Hold
from sollol_proxy.routing import Choice, Reason
from sollol_proxy.routing.performance import category
from sollol_proxy.routing.ranking import Ranking


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


def failover(
    kept: Mapping[str, Kept],
    choices: list[Choice],
    strategy: str,
    others: list[Kept],
    beyond: str,
) -> Ranking[Target]:
    """The failover list: the ranked `choices` (`kept`: the views' entries, which know their
    node), then, by lower bound after the priced ones (failover reaches them only when the
    nodes before them are all skipped or failed), the `others`; each `Target` made when the
    forwarder first reads it, which is mostly the first one or two."""
    priced = len(choices)

    def target(i: int) -> Target:
        if i < priced:
            choice = choices[i]
            return Target.ranked(kept[choice.node].node, strategy, choice)  # type: ignore[arg-type]
        entry = others[i - priced]
        return Target(entry.node, beyond, category(entry.view))  # type: ignore[arg-type]

    return Ranking(priced + len(others), target)


def least_loaded(nodes: list[NodeState], request_id: str, why: str, reason: Reason) -> list[Target]:
    """`nodes` least loaded first (ties spread by request), each saying `why` it could go."""

    def key(node: NodeState) -> tuple[float, int]:
        return node.in_flight / believed_total(node), zlib.crc32(
            f"{request_id}/{node.name}".encode()
        )

    return [
        Target(
            node,
            f"{why}; least loaded, {node.in_flight}/{believed_total(node)} slots busy",
            reason,
        )
        for node in sorted(nodes, key=key)
    ]
