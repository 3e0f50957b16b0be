"""How many requests a node runs at once for one model (Ollama's slots, reference 5.1, 5.2),
and which of them the proxy's requests hold.

Ollama gives every loaded model `OLLAMA_NUM_PARALLEL` slots, except embedding models and a few
families that it forces to one. The proxy reads both facts from the node's own `/api/tags`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sollol_proxy.fleet.fleet import NodeState
from sollol_proxy.wire.slots import SINGLE_SLOT_FAMILIES


def _embedding_only(item: dict[str, Any] | None) -> bool:
    capabilities = item.get("capabilities") if item else None  # newer Ollama lists them
    return (
        isinstance(capabilities, list)
        and "embedding" in capabilities
        and "completion" not in capabilities
    )


def _single_slot(item: dict[str, Any] | None) -> bool:
    if not item:
        return False
    details = item.get("details")
    family = details.get("family") if isinstance(details, dict) else None
    return family in SINGLE_SLOT_FAMILIES or _embedding_only(item)


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


def model_room(node: NodeState, model: str) -> int:
    """Requests the proxy may have on `node` for `model`: its slots, plus one waiting inside
    Ollama for an embedding model. An embedding request is short (milliseconds per input), so
    the proxy's own dispatch between one answer and the next request would leave the node idle
    for a noticeable share of its time; with one request queued behind the running one the node
    starts the next at once. That request has left the proxy's priority queue, so a more urgent
    one may wait behind it: one embedding call at most. A generation, which can run for
    minutes, waits in the proxy instead."""
    return model_slots(node, model) + (1 if _embedding_only(node.models.get(model)) else 0)


def slots_believed(node: NodeState) -> int:
    """Requests `node` is believed to run at once: the slots of its loaded runners, or one
    runner's worth while nothing is loaded (what the next load will have)."""
    loaded = node.loaded.keys() | node.recent.keys()
    if not loaded:
        return node.config.num_parallel
    return sum(model_slots(node, model) for model in loaded)
