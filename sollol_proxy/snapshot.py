"""The fleet's live state and what was learned, frozen into the views a strategy ranks."""

from __future__ import annotations

import time
from collections.abc import Mapping

from .fleet import NodeState
from .learning import Learner
from .routing import NodeView
from .routing.analysis import RequestProfile
from .routing.eviction import Runner, eviction_cost, victims
from .views import timestamp_ns


def _size(item: Mapping[str, object] | None) -> int:
    size = item.get("size") if item else None
    return size if isinstance(size, int) else 0


def runners(
    node: NodeState, learner: Learner, exclude: str, replicas: Mapping[str, int] | None = None
) -> list[Runner]:
    """The models loaded on `node` other than `exclude`, as eviction candidates. A model also
    loaded on other nodes (`replicas`: model -> nodes holding it) is cheaper to lose here."""
    slots = node.config.num_parallel
    now_ns = time.time_ns()
    result = []
    for model in node.loaded.keys() | node.recent.keys():
        if model == exclude:
            continue
        item = node.loaded.get(model)
        size = item.get("size_vram") if item else None
        size = size if isinstance(size, int) and size else _size(item or node.models.get(model))
        in_flight = node.model_in_flight.get(model, 0)
        result.append(
            Runner(
                model=model,
                size=size,
                in_flight=in_flight,
                expires_ns=timestamp_ns(item.get("expires_at")) - now_ns if item else 0,
                load_s=learner.load_s(node.name, model, size),
                drain_s=in_flight / slots * learner.service_s(node.name, model),
                demand=learner.demand(model) / max(1, (replicas or {}).get(model, 1)),
            )
        )
    return result


def node_view(
    node: NodeState,
    profile: RequestProfile,
    learner: Learner,
    cached_tokens: int,
    replicas: Mapping[str, int],
) -> NodeView:
    model, name = profile.model, node.name
    resident = node.is_resident(model)
    options_match = node.runner_options.get(model, ()) == profile.runner_options
    size = _size(node.models.get(model))
    evict = 0.0
    if not (resident and options_match):
        evict = eviction_cost(
            runners(node, learner, exclude=model, replicas=replicas),
            size,
            node.config.vram_bytes,
            node.config.max_loaded_models,
        )
    return NodeView(
        name=name,
        in_flight=node.in_flight,
        num_parallel=node.config.num_parallel,
        resident=resident,
        model_in_flight=node.model_in_flight.get(model, 0),
        options_match=options_match,
        cached_tokens=cached_tokens,
        loads_pending=node.loads_pending,
        prefill_tps=learner.prefill_tps(name, model),
        decode_tps=learner.decode_tps(name, model),
        load_s=learner.load_s(name, model, size),
        service_s=learner.service_s(name, model, profile.prompt_tokens),
        evict_s=evict,
        success=learner.success(name),
    )


def planned_victims(node: NodeState, model: str, learner: Learner) -> list[str]:
    """The models Ollama will unload on `node` to load `model` there."""
    need = _size(node.models.get(model))
    chosen = victims(
        runners(node, learner, exclude=model),
        need,
        node.config.vram_bytes,
        node.config.max_loaded_models,
    )
    return [runner.model for runner in chosen]


def replica_counts(nodes: list[NodeState]) -> dict[str, int]:
    """Model -> how many of these nodes hold it loaded."""
    counts: dict[str, int] = {}
    for node in nodes:
        for model in node.loaded.keys() | node.recent.keys():
            counts[model] = counts.get(model, 0) + 1
    return counts
