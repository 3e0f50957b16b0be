"""How many requests a node runs at once for one model (Ollama's slots, reference 5.1, 5.2),
and which of them the proxy's requests hold.

Ollama gives every loaded model `OLLAMA_NUM_PARALLEL` slots, except embedding models and a few
families that it forces to one. The proxy reads both facts from the node's own `/api/tags`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .fleet import NodeState

# llm/server.go: these architectures run with a single slot whatever OLLAMA_NUM_PARALLEL says.
SINGLE_SLOT_FAMILIES = frozenset(
    {
        "mllama",
        "qwen3vl",
        "qwen3vlmoe",
        "qwen35",
        "qwen35moe",
        "qwen3next",
        "lfm2",
        "lfm2moe",
        "nemotron_h",
        "nemotron_h_moe",
        "nemotron_h_omni",
    }
)


def _single_slot(item: dict[str, Any] | None) -> bool:
    if not item:
        return False
    details = item.get("details")
    family = details.get("family") if isinstance(details, dict) else None
    if family in SINGLE_SLOT_FAMILIES:
        return True
    capabilities = item.get("capabilities")  # newer Ollama lists them in /api/tags
    return (
        isinstance(capabilities, list)
        and "embedding" in capabilities
        and "completion" not in capabilities
    )


def model_size(item: Mapping[str, Any] | None) -> int:
    """The `size` of a /api/tags or /api/ps item (0 when unknown)."""
    size = item.get("size") if item else None
    return size if isinstance(size, int) else 0


def model_memory(node: NodeState, model: str) -> int:
    """What `model` takes on `node`'s GPU: Ollama's size_vram when loaded, else its size."""
    item = node.loaded.get(model)
    size = item.get("size_vram") if item else None
    return size if isinstance(size, int) and size else model_size(item or node.models.get(model))


def model_slots(node: NodeState, model: str) -> int:
    """Requests `node` runs in parallel for `model` once it is loaded."""
    if node.config.num_parallel > 1 and _single_slot(node.models.get(model)):
        return 1
    return node.config.num_parallel


class SlotTable:
    """The slots the proxy's requests hold, per node and model."""

    def __init__(self) -> None:
        self._held: dict[str, dict[str, int]] = {}  # node -> model -> slots held

    def is_free(self, node: NodeState, model: str) -> bool:
        """A request for `model` can start on `node` now without waiting inside Ollama: a slot
        of the model's runner is free, or the model can get a runner without unloading a busy
        one (fewer than max_loaded_models models running and, when the node's `vram` is
        configured, room for it beside them)."""
        running = self._held.get(node.name, {})
        held = running.get(model, 0)
        if held:
            return held < model_slots(node, model)
        if len(running) >= node.config.max_loaded_models:
            return False
        vram = node.config.vram_bytes
        if vram is None or not running:
            return True  # alone on the node, a model is Ollama's to fit
        busy = sum(model_memory(node, m) for m in running)
        return busy + model_memory(node, model) <= vram

    def take(self, node: NodeState, model: str) -> None:
        running = self._held.setdefault(node.name, {})
        running[model] = running.get(model, 0) + 1

    def give(self, node: NodeState, model: str) -> None:
        running = self._held[node.name]
        running[model] -= 1
        if not running[model]:
            del running[model]

    def in_use(self, node: str) -> dict[str, int]:
        return dict(self._held.get(node, {}))

    def all_in_use(self) -> dict[str, dict[str, int]]:
        return {node: dict(models) for node, models in self._held.items() if models}
