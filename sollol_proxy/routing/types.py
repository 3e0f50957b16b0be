"""The small vocabulary shared by every strategy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a strategy may know about the request."""

    model: str
    request_id: str


@dataclass(frozen=True, slots=True)
class NodeView:
    """One candidate node as the registry saw it when the request arrived."""

    name: str
    in_flight: int
    num_parallel: int
    resident: bool  # the requested model is loaded in the node's memory (/api/ps)


@dataclass(frozen=True, slots=True)
class Choice:
    node: str
    reason: str


class Strategy(Protocol):
    name: ClassVar[str]

    def rank(self, request: RouteRequest, candidates: Sequence[NodeView]) -> list[Choice]:
        """Every candidate, best first; the proxy fails over down this list."""
        ...
