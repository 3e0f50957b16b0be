"""One node as the proxy knows it: health, beliefs, models on disk and loaded, requests in flight.

`Fleet` (fleet.py) keeps these up to date from probes; `Lease` counts one request in a node's
in-flight numbers for as long as the node works on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sollol_proxy.config import NodeConfig
from sollol_proxy.fleet.beliefs import NodeBeliefs
from sollol_proxy.fleet.health import NodeHealth


class Lease:
    """One request counted in a node's in-flight numbers."""

    def __init__(self, node: NodeState, model: str) -> None:
        self._node: NodeState | None = node
        self._model = model
        node.in_flight += 1
        node.model_in_flight[model] = node.model_in_flight.get(model, 0) + 1
        node.changes += 1

    def end(self) -> None:
        """The node is done with the request (at its last byte, or when it failed)."""
        node, self._node = self._node, None
        if node is not None:
            node.in_flight -= 1
            node.model_in_flight[self._model] -= 1
            if not node.model_in_flight[self._model]:
                del node.model_in_flight[self._model]
            node.changes += 1


@dataclass
class NodeState:
    config: NodeConfig
    health: NodeHealth = field(init=False)
    beliefs: NodeBeliefs = field(init=False)  # its slots and memory: read through capacity.py
    version: str | None = None
    # normalized model name -> the node's own /api/tags item (kept for the fleet-wide views)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    # normalized model name -> the node's own /api/ps item
    loaded: dict[str, dict[str, Any]] = field(default_factory=dict)
    expires_ns: dict[str, int] = field(default_factory=dict)  # parsed expires_at of `loaded`
    # model -> when the proxy saw it answered here, since the last /api/ps (its own loads)
    recent: dict[str, float] = field(default_factory=dict)
    # the load-time options the proxy last sent per model (reference 5.4: a change reloads)
    runner_options: dict[str, tuple[tuple[str, object], ...]] = field(default_factory=dict)
    in_flight: int = 0
    model_in_flight: dict[str, int] = field(default_factory=dict)
    # model -> requests sent while it was not loaded here, until their first byte: Ollama is
    # loading it (one model at a time per node)
    loading: dict[str, int] = field(default_factory=dict)
    # model -> loads under way here that will unload it to make room
    evicting: dict[str, int] = field(default_factory=dict)
    # when /api/tags was last read (monotonic); None: never, or known to be out of date
    inventory_at: float | None = None
    failed_probes: int = 0  # in a row: spaces the probes out while the node is down
    # Counts the changes to what routing sees of the node (in flight, loaded, loading, options,
    # models, slots): views of it made before a change are out of date (fleet/views.py).
    changes: int = 0

    def __post_init__(self) -> None:
        self.health = NodeHealth(self.config.name)
        self.beliefs = NodeBeliefs(self.config)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def healthy(self) -> bool:
        """Reachable (probes answer): its models count in the fleet views. Whether it may take
        new work right now is `health.admits()`, which is what `Fleet.healthy()` uses."""
        return self.health.reachable

    @healthy.setter
    def healthy(self, value: bool) -> None:
        # What a probe would do (tests and benchmarks set up node states this way).
        if value:
            self.health.probe_ok()
        else:
            self.health.probe_failed("marked down")

    @property
    def last_error(self) -> str:
        return self.health.reason

    def is_resident(self, model: str) -> bool:
        return (model in self.loaded or model in self.recent) and model not in self.evicting

    def loads_pending(self, other_than: str = "") -> int:
        """Loads this node is busy with, other than `other_than`'s."""
        return sum(1 for m in self.loading if m != other_than and m not in self.loaded)

    def hold(self, counts: dict[str, int], models: list[str], step: int) -> None:
        """Add `step` (1 or -1) to `counts` for `models`, dropping keys that reach zero."""
        self.changes += 1
        for model in models:
            value = counts.get(model, 0) + step
            if value > 0:
                counts[model] = value
            else:
                counts.pop(model, None)
