"""The small vocabulary shared by every strategy: a request, a node snapshot, a choice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, NamedTuple, Protocol


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a strategy may know about the request."""

    model: str
    request_id: str
    prompt_tokens: int = 0
    expected_output: float = 0.0  # tokens the answer is expected to have


@dataclass(slots=True)
class NodeView:
    """One candidate node, for the requested model, as the proxy saw it when the request arrived.

    Times are seconds, speeds tokens per second; all of it is learned or configured outside.
    Never changed once made (a view is kept from one request to the next and in the decisions
    shown); not `frozen` only because a frozen dataclass takes several times longer to make,
    and views are made for every candidate of every request.
    """

    name: str
    in_flight: int  # requests on this node, any model
    num_parallel: int  # slots per loaded model
    resident: bool  # the model is loaded (/api/ps, or the proxy just used it there)
    model_in_flight: int = 0  # requests for this model on this node (they share its slots)
    options_match: bool = True  # the loaded runner has the request's load-time options
    cached_tokens: int = 0  # prompt tokens this node likely still holds in its KV cache
    loading: bool = False  # the node is loading this model already (for an earlier request)
    loads_pending: int = 0  # loads of other models this node is busy with (one at a time)
    prefill_tps: float = 1000.0
    decode_tps: float = 30.0
    load_s: float = 5.0  # expected time to load this model here
    service_s: float = 5.0  # typical time one request of this model holds a slot here
    evict_s: float = 0.0  # cost of what loading this model here would evict
    success: float = 1.0  # recent success rate of this node
    # Prompt tokens of prefixes other conversations share that the slot this request would get
    # holds and would lose, weighted by how likely they are to be asked for here again.
    displaced_tokens: float = 0.0
    # Set for a busy slot the request could wait for: the expected wait until it is its turn
    # there (the slot's current request ends, then the ones already waiting for it).
    slot_wait_s: float | None = None


class Estimate(NamedTuple):
    """Expected completion time of the request on one node, and what it is made of (a named
    tuple: several times cheaper to make than a dataclass, once per candidate per request)."""

    total: float
    wait: float
    load: float
    evict: float  # models a load pushes out, and shared prefixes its slot would lose
    prefill: float
    decode: float


class Reason(StrEnum):
    """Why a node was chosen, in a few fixed categories (metric labels must stay bounded; the
    free-text `Choice.reason` says the rest)."""

    RESIDENT = "resident"  # the model is loaded there
    CACHE_AFFINITY = "cache_affinity"  # loaded there, and the node holds part of the prompt
    COLD_LOAD = "cold_load"  # the model has to be loaded there
    LOADING = "loading"  # joins a load of the model already under way there
    RELOAD = "reload"  # loaded with other load-time options: Ollama reloads it
    LEAST_LOADED = "least_loaded"
    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    # Paths that do not go through a strategy.
    PINNED = "pinned"  # X-Sollol-Node
    NO_MODEL = "no_model"  # the request names no model: the node answers Ollama's error
    NO_NODE_HAS_MODEL = "no_node_has_model"  # a node answers Ollama's own "not found"
    NOT_MODEL_SPECIFIC = "not_model_specific"  # any healthy node can answer
    PLACEMENT = "placement"  # blob uploads: the placement node
    METADATA = "metadata"  # /api/show, /v1/models/:model: read from the model's files, no load
    RETRY = "retry"  # the ranked nodes failed; a node that became available meanwhile took it


class Choice:
    """One ranked node. Its `reason` is for people (X-Sollol-Route, /sollol/decisions), who
    read a few of them: a strategy's subclass may write it only when it is first read."""

    __slots__ = ("_reason", "category", "estimate", "node")

    def __init__(
        self,
        node: str,
        reason: str,
        category: Reason,  # for metrics and dashboards
        estimate: Estimate | None = None,
    ) -> None:
        self.node = node
        self._reason = reason
        self.category = category
        self.estimate = estimate

    @property
    def reason(self) -> str:
        return self._reason

    def _fields(self) -> tuple[str, str, Reason, Estimate | None]:
        return (self.node, self.reason, self.category, self.estimate)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Choice) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # equal by value, and not immutable

    def __repr__(self) -> str:
        node, reason, category, estimate = self._fields()
        return f"Choice({node!r}, {reason!r}, {category!r}, {estimate!r})"


class Strategy(Protocol):
    name: ClassVar[str]

    def rank(self, request: RouteRequest, candidates: Sequence[NodeView]) -> list[Choice]:
        """Every candidate, best first; the proxy fails over down this list."""
        ...
