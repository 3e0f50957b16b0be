"""What a node not measured yet is believed to be, from the nodes of its fleet.

A node not measured yet for a model is believed to be like what is known (`Peers`): its own
other models first (OLLAMA_NUM_PARALLEL is one setting per node), else the fewest the other
nodes have for the same model, else for any model, else one slot. Such beliefs follow the others
as they are learned, until the node's own answers say more. A belief that is still growing
(proofs, no wait yet: only a lower bound) is raised to the most a peer proved for the model,
unless a node has shown fewer (the nodes differ), and lowered again by the node's own waits.
So do memory bounds: a node that has shown no eviction yet is believed to hold what its peers
were seen to hold, or more if it showed more.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from sollol_proxy.fleet.estimator import CapacityEstimator
from sollol_proxy.fleet.memory import MemoryBelief

log = logging.getLogger("sollol.capacity")


class _SlotBelief(Protocol):
    """What the peers read of a node's belief of a model's slots (beliefs.SlotBelief)."""

    estimator: CapacityEstimator
    fresh: bool
    forced: bool

    @property
    def evidence(self) -> bool: ...


class NodeBeliefs(Protocol):
    """What the peers read and set of a node's beliefs (beliefs.NodeBeliefs); a protocol, so
    that the two modules do not import each other."""

    name: str
    peers: Peers | None
    memory: MemoryBelief

    @property
    def slots(self) -> Mapping[str, _SlotBelief]: ...


class Peers:
    """The nodes of one fleet, for what a node not measured yet is believed to be."""

    def __init__(self) -> None:
        self._members: dict[str, NodeBeliefs] = {}
        self._by_model: dict[str, int] = {}  # model -> what the nodes measured, lower median
        self._by_node: dict[str, int] = {}  # node -> what its models measured, lower median
        self._overall: int | None = None
        # What the nodes that know their memory hold, for those that do not yet (lower median).
        self.max_loaded: int | None = None
        self.vram_bytes: int | None = None

    def join(self, node: NodeBeliefs) -> None:
        node.peers = self
        self._members[node.name] = node
        self.learned()
        self.memory_learned()

    def leave(self, node: NodeBeliefs) -> None:
        if self._members.get(node.name) is node:
            del self._members[node.name]
            node.peers = None
            self.learned()
            self.memory_learned()

    def prior(self, node: NodeBeliefs, model: str) -> int:
        own = self._by_node.get(node.name)
        if own is not None:
            return own
        return self._by_model.get(model) or self._overall or 1

    def learned(self) -> None:
        """A belief changed: recount, and move the unmeasured beliefs along."""
        by_model: dict[str, list[int]] = {}
        by_node: dict[str, list[int]] = {}
        for node in self._members.values():
            for model, belief in node.slots.items():
                if belief.evidence:
                    value = belief.estimator.believed
                    by_model.setdefault(model, []).append(value)
                    by_node.setdefault(node.name, []).append(value)
        # Other nodes may have other OLLAMA_NUM_PARALLEL: a node not measured yet is believed to
        # have the fewest slots its peers have, since a belief too high makes a round of requests
        # wait inside Ollama (one too low costs one round of the window of one, estimator.py).
        self._by_model = {m: min(v) for m, v in by_model.items()}
        self._by_node = {n: _lower_median(v) for n, v in by_node.items()}
        everything = [v for values in by_node.values() for v in values]
        self._overall = min(everything) if everything else None
        # A belief still growing (no wait seen) is a lower bound: one below what a peer proved
        # for the model is raised to it at once rather than waiting for this node's own proof,
        # which needs its own bursts (on a node that routing keeps at one request, never):
        # OLLAMA_NUM_PARALLEL is one setting, mostly the same across a fleet. Not once a node
        # has shown fewer (a wait below the highest proof, or a configured value below it):
        # the fleet's nodes differ, and a node raised to a peer's slots would send all those it
        # has not got to wait inside Ollama (measured on the 1/2/4 fleet: the 2-slot node raised
        # to 4). A node raised and having fewer shows it by `strikes` waits.
        highest = {m: max(v) for m, v in by_model.items()}
        for node in self._members.values():
            for model, belief in node.slots.items():
                estimator = belief.estimator
                if (
                    belief.evidence
                    and not estimator.growing
                    and estimator.believed < highest.get(model, 0)
                ):
                    del highest[model]
        for node in self._members.values():
            for model, belief in node.slots.items():
                estimator = belief.estimator
                if belief.fresh and estimator.fixed is None:
                    prior = self.prior(node, model)
                    if prior != estimator.believed:
                        change = estimator.reset("believed like its peers", prior)
                        if change is not None:
                            log.info("node %s, model %s: %s", node.name, model, change)
                elif not belief.forced and model in highest:
                    change = estimator.lift(highest[model], "a peer proved more")
                    if change is not None:
                        log.info("node %s, model %s: %s", node.name, model, change)

    def memory_learned(self) -> None:
        """A node's memory bounds changed: recount what the others are believed to hold."""
        memories = [node.memory for node in self._members.values()]
        loaded = [m.max_loaded for m in memories if m.max_loaded is not None]
        vram = [m.vram_bytes for m in memories if m.vram_bytes is not None]
        self.max_loaded = _lower_median(loaded) if loaded else None
        self.vram_bytes = _lower_median(vram) if vram else None


def _lower_median(values: list[int]) -> int:
    values = sorted(values)
    return values[(len(values) - 1) // 2]
