"""The slots the proxy's own requests hold, per node and model, and whether one more may start."""

from __future__ import annotations

from sollol_proxy.fleet.capacity import max_loaded, model_memory, model_room, vram_bytes
from sollol_proxy.fleet.node import NodeState


class SlotTable:
    """The slots the proxy's requests hold, per node and model."""

    def __init__(self) -> None:
        # node -> model -> slots held; a node appears only while a request holds a slot there
        self.held: dict[str, dict[str, int]] = {}

    def is_free(self, node: NodeState, model: str) -> bool:
        """A request for `model` can start on `node` now without waiting inside Ollama: a slot
        of the model's runner is free (or, while the slots are being learned, one more than
        known is tried; for an embedding model one request may also wait there: see
        capacity.model_room), or the model can get a runner without unloading a busy one (fewer
        than max_loaded_models models running and, when the node's memory is known, room for it
        beside them)."""
        running = self.held.get(node.name)
        if not running:
            return True  # nothing of the proxy's runs there (and max_loaded is at least 1)
        held = running.get(model, 0)
        if held:
            return held < model_room(node, model)
        if len(running) >= max_loaded(node):
            return False
        vram = vram_bytes(node)
        if vram is None:
            return True
        busy = sum(model_memory(node, m) for m in running)
        return busy + model_memory(node, model) <= vram

    def take(self, node: NodeState, model: str) -> None:
        running = self.held.setdefault(node.name, {})
        running[model] = running.get(model, 0) + 1

    def give(self, node: NodeState, model: str) -> None:
        running = self.held[node.name]
        running[model] -= 1
        if not running[model]:
            del running[model]
            if not running:  # `held` lists only the nodes where a slot is held
                del self.held[node.name]

    def holds(self, node: str) -> bool:
        """Does a request of the proxy's hold a slot on `node`?"""
        return bool(self.held.get(node))

    def in_use(self, node: str) -> dict[str, int]:
        return dict(self.held.get(node, {}))

    def all_in_use(self) -> dict[str, dict[str, int]]:
        return {node: dict(models) for node, models in self.held.items() if models}
