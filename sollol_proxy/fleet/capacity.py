"""How many requests a node runs at once for one model (Ollama's slots, reference 5.1, 5.2), and
how many models and how much memory it holds: the one place the rest of the proxy asks.

Ollama gives every loaded model `OLLAMA_NUM_PARALLEL` slots, except embedding models and a few
families that it forces to one (read from the node's own `/api/tags`). Unless the operator gave
`num_parallel`, the slots are learned from the proxy's own requests (estimator.py, beliefs.py):
`model_slots` is the belief (what the views show), `slot_limit` how many requests admission
control lets run there (the belief, plus one while it probes for more or is still growing), and
`routing_slots` what the scorer and the prompt-cache map plan with. Memory bounds come from the
configuration, else from /api/ps and evictions (memory.py), the node's own or its peers'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sollol_proxy.fleet.beliefs import SlotBelief
from sollol_proxy.fleet.estimator import slot_wait, waited
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.wire.slots import SINGLE_SLOT_FAMILIES
from sollol_proxy.wire.timings import LOAD_THRESHOLD_S, Timings

# Ollama's automatic OLLAMA_MAX_LOADED_MODELS is 3 per GPU (reference 5.1): until a node shows
# more models resident together, or an eviction shows fewer, it is assumed to have one GPU.
DEFAULT_MAX_LOADED = 3
# Ollama's total_duration starts when its handler runs, a little after the proxy sent the
# request: the slot was taken at most this much later than the timings alone say.
SLOT_MARGIN_S = 0.05
# How long after another request's first byte the end of the one that freed its slot may be heard.
END_LAG_S = 0.05
# Where a belief comes from (bounded: a metric label).
SOURCES = ("configured", "default", "probing", "learned")


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


def slot_belief(node: NodeState, model: str) -> SlotBelief | None:
    """The belief about `model`'s slots on `node`, made on first use; None for a model the
    node does not list (a client's invented name must not grow the table)."""
    belief = node.beliefs.slots.get(model)
    if belief is None:
        item = node.models.get(model)
        if item is None:
            return None
        belief = node.beliefs.slot(model, forced=_single_slot(item))
    return belief


def model_slots(node: NodeState, model: str) -> int:
    """Requests `node` is believed to run in parallel for `model` once it is loaded."""
    belief = node.beliefs.slots.get(model)
    if belief is not None:
        return belief.estimator.believed
    if _single_slot(node.models.get(model)):
        return 1
    return node.beliefs.prior(model)


def routing_slots(node: NodeState, model: str) -> int:
    """The slots routing plans with (the scorer, the prompt-cache map): the belief, or, while
    it is still growing (slow start), what admission control lets in, so that a node whose
    slots are not known yet is tried as it would be admitted rather than priced as full."""
    belief = node.beliefs.slots.get(model)
    if belief is not None:
        estimator = belief.estimator
        return estimator.limit if estimator.source in ("default", "probing") else estimator.believed
    if node.config.num_parallel is not None or _single_slot(node.models.get(model)):
        return model_slots(node, model)
    return node.beliefs.prior(model) + 1  # a fresh estimator's first limit


def slot_source(node: NodeState, model: str) -> str:
    """Where the belief about `model`'s slots on `node` comes from (one of SOURCES)."""
    belief = node.beliefs.slots.get(model)
    if belief is not None:
        return belief.estimator.source
    if node.config.num_parallel is not None or _single_slot(node.models.get(model)):
        return "configured"
    return "default"


def slot_limit(node: NodeState, model: str) -> int:
    """How many of the proxy's requests for `model` may run on `node` now (admission control):
    the belief, and one more while probing whether the node has more or while it is still
    growing (slow start)."""
    belief = slot_belief(node, model)
    return model_slots(node, model) if belief is None else belief.estimator.limit


def believed_total(node: NodeState) -> int:
    """The slots `node` is believed to offer now: summed over the models it has loaded or is
    running, else what one model would get there (for charts of slots in use against it)."""
    models = node.loaded.keys() | node.recent.keys() | node.model_in_flight.keys()
    models.discard("")
    if not models:
        return node.beliefs.prior("")
    return sum(model_slots(node, m) for m in models)


def max_loaded(node: NodeState) -> int:
    """How many models `node` holds at once: configured, else learned from /api/ps (its own
    evictions, else its peers', never fewer than it was seen to hold)."""
    memory, peers = node.beliefs.memory, node.beliefs.peers
    if memory.max_loaded is not None:
        return memory.max_loaded
    like = peers.max_loaded if peers is not None else None
    return max(DEFAULT_MAX_LOADED if like is None else like, memory.loaded_seen)


def vram_bytes(node: NodeState) -> int | None:
    """Memory `node` has for models: configured, else what an eviction showed there, else on
    its peers (never less than it was seen to use); None: unknown."""
    memory, peers = node.beliefs.memory, node.beliefs.peers
    if memory.vram_bytes is not None:
        return memory.vram_bytes
    like = peers.vram_bytes if peers is not None else None
    return None if like is None else max(like, memory.vram_seen)


def memory_source(node: NodeState) -> str:
    """Where the memory bounds come from: configured, evictions (seen on the node), peers
    (seen on other nodes), resident (only a lower bound seen), default."""
    memory, peers = node.beliefs.memory, node.beliefs.peers
    own = memory.source
    if own in ("configured", "evictions") or peers is None:
        return own
    return "peers" if peers.max_loaded is not None or peers.vram_bytes is not None else own


def learn(
    node: NodeState,
    model: str,
    belief: SlotBelief,
    k: int,
    dispatched_at: float,
    first_byte_at: float | None,
    timings: Timings | None,
    streamed: bool,
    now: float,
    cold: bool = False,
    asked: float | None = None,
    unsure: int = 0,
) -> None:
    """Fold one answered request (HTTP 200, whole) into the belief; `k` was in flight when it
    was sent, itself included; `cold`: the model was not believed loaded there then; `asked`:
    when its slot shared with other replicas was asked for (`SlotBelief.overlap`); `unsure`:
    of the other replicas' requests in `k`, those that may have been waiting for a slot, which
    a run without a wait does not prove (a wait counts them: errs towards fewer slots)."""
    estimator = belief.estimator
    if timings is not None and not cold and timings.load_s >= LOAD_THRESHOLD_S:
        # A load where the model was loaded: a new runner (the node restarted between two
        # probes, or the model was unloaded behind the proxy's back), maybe with other slots.
        node.beliefs.restarted("a load where the model was loaded: a new runner", [model])
    if timings is not None and not (timings.prompt_s or timings.output_s):
        timings = None  # a load without a prompt, or embeddings: no slot wait in these timings
    if timings is not None:
        wait = slot_wait(timings.total_s, timings.load_s, timings.prompt_s, timings.output_s)
        slot_at = dispatched_at + timings.load_s + wait + SLOT_MARGIN_S
        if streamed and first_byte_at is not None:
            # The first token comes after the slot: a later bound, but one that holds even if
            # the node's timings left the wait out. The request that gave the slot up may be
            # heard to end a little after it (its last bytes follow the release).
            slot_at = min(slot_at, first_byte_at + END_LAG_S)
        if waited(wait, timings.total_s):
            note = belief.settled(dispatched_at, slot_at, now)
            change = estimator.finished(k, wait, now, total_s=timings.total_s)
        else:
            overlap = max(1, belief.overlap(k, dispatched_at, slot_at, asked) - unsure)
            note = belief.ran_free(dispatched_at, overlap, now)
            change = None
    elif streamed and first_byte_at is not None:
        # No timings (the OpenAI routes): a streamed first byte means the request held a slot,
        # beside those sent before it that were still in flight.
        overlap = max(
            1, belief.overlap(k, dispatched_at, first_byte_at + END_LAG_S, asked) - unsure
        )
        note, change = belief.ran_free(dispatched_at, overlap, now), None
    else:
        # Nothing tells when it had its slot: the proofs of those sent after it count it as
        # waiting until its end.
        node.beliefs.note(model, belief.settled(dispatched_at, now, now))
        return
    node.beliefs.note(model, note)
    was_fresh, belief.fresh = belief.fresh, False
    node.beliefs.note(model, change)
    if was_fresh and change is None:
        node.beliefs.changed()  # it counts among the peers now


def snapshot(node: NodeState, in_use: Mapping[str, int]) -> dict[str, Any]:
    """What /sollol/nodes shows of `node`'s capacity; `in_use`: admission slots held per model."""
    memory = node.beliefs.memory
    models = {}
    for model in sorted(node.beliefs.slots.keys() | in_use.keys()):
        belief = node.beliefs.slots.get(model)
        believed = model_slots(node, model)
        models[model] = {
            "in_use": in_use.get(model, 0),
            "believed": believed,
            "limit": believed if belief is None else belief.estimator.limit,
            "source": slot_source(node, model),
        }
    return {
        "slots_per_model": node.beliefs.prior(""),
        "slots_source": "configured" if node.config.num_parallel is not None else "auto",
        "models": models,
        "memory": {
            "vram": vram_bytes(node),
            "max_loaded_models": max_loaded(node),
            "source": memory_source(node),
            "most_resident_together": memory.loaded_seen,
            "most_vram_together": memory.vram_seen,
        },
    }


def model_room(node: NodeState, model: str) -> int:
    """Requests the proxy may have on `node` for `model`: what admission lets run
    (`slot_limit`), plus one waiting inside Ollama for an embedding model. An embedding request
    is short (milliseconds per input), so the proxy's own dispatch between one answer and the
    next request would leave the node idle for a noticeable share of its time; with one request
    queued behind the running one the node starts the next at once. That request has left the
    proxy's priority queue, so a more urgent one may wait behind it: one embedding call at most.
    A generation, which can run for minutes, waits in the proxy instead."""
    return slot_limit(node, model) + (1 if _embedding_only(node.models.get(model)) else 0)
