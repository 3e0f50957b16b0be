"""The fleet's live state and what was learned, frozen into the views a strategy ranks."""

from __future__ import annotations

import time
from collections.abc import Mapping

from sollol_proxy.fleet.capacity import (
    max_loaded,
    model_memory,
    model_size,
    routing_slots,
    vram_bytes,
)
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.prompt_cache import Probe
from sollol_proxy.routing import NodeView
from sollol_proxy.routing.analysis import RequestProfile
from sollol_proxy.routing.eviction import Runner, eviction_cost, victims


def runners(
    node: NodeState,
    learner: Learner,
    exclude: str,
    demand: Mapping[str, float] | None = None,
) -> list[Runner]:
    """The models loaded (or being loaded) on `node` other than `exclude`: eviction candidates.
    `demand` (model -> 0..1) prices losing each; without it every model counts as wanted."""
    now_ns = time.time_ns()
    result = []

    for model in (
        node.loaded.keys() | node.recent.keys() | node.loading.keys()
    ) - node.evicting.keys():
        if model == exclude:
            continue
        size = model_memory(node, model)
        in_flight = node.model_in_flight.get(model, 0)
        expires = node.expires_ns.get(model)
        result.append(
            Runner(
                model=model,
                size=size,
                in_flight=in_flight,
                expires_ns=expires - now_ns if expires else 0,
                load_s=learner.load_s(node.name, model, size),
                drain_s=in_flight / routing_slots(node, model) * learner.service_s(node.name, model)
                if in_flight
                else 0.0,
                demand=1.0 if demand is None else demand.get(model, 0.0),
            )
        )
    return result


def _might_evict(node: NodeState, model: str) -> bool:
    """Cheap test before pricing evictions: would loading `model` here exceed a limit?"""
    present = (
        (node.loaded.keys() | node.recent.keys() | node.loading.keys())
        - node.evicting.keys()
        - {model}
    )
    if len(present) >= max_loaded(node):
        return True
    vram = vram_bytes(node)
    return (
        vram is not None
        and sum(model_memory(node, m) for m in present) + model_size(node.models.get(model)) > vram
    )


def _options_match(node: NodeState, profile: RequestProfile) -> bool:
    """Would the loaded runner serve these load-time options without a reload (reference 5.4)?"""
    recorded = node.runner_options.get(profile.model)
    if recorded is not None:
        return recorded == profile.runner_options
    # Loaded by someone else, or before the proxy started: /api/ps still tells its num_ctx.
    requested = dict(profile.runner_options).get("num_ctx")
    loaded = node.loaded.get(profile.model, {}).get("context_length")
    return requested is None or loaded is None or requested == loaded


def node_view(
    node: NodeState,
    profile: RequestProfile,
    learner: Learner,
    cached_tokens: int,
    demand: Mapping[str, float],
    displaced_tokens: float = 0.0,
) -> NodeView:
    model, name = profile.model, node.name
    resident = node.is_resident(model)
    options_match = _options_match(node, profile) if resident else True
    size = model_size(node.models.get(model))
    evict = 0.0
    if (not resident or not options_match) and _might_evict(node, model):
        evict = eviction_cost(
            runners(node, learner, exclude=model, demand=demand),
            size,
            vram_bytes(node),
            max_loaded(node),
        )
    busy = node.model_in_flight.get(model, 0)
    slots = routing_slots(node, model)
    ready = resident and options_match
    loading = model in node.loading
    return NodeView(
        name=name,
        in_flight=node.in_flight,
        num_parallel=slots,
        resident=resident,
        model_in_flight=busy,
        options_match=options_match,
        cached_tokens=cached_tokens,
        loading=loading,
        loads_pending=node.loads_pending(model),
        prefill_tps=learner.prefill_tps(name, model),
        decode_tps=learner.decode_tps(name, model),
        # Only what the estimate will use is looked up: a load where there is none, the time
        # a request holds a slot where the model's requests queue (busy, or a reload behind
        # them). That time depends on the prompt until it is measured: views.py keys on it.
        load_s=0.0 if ready else learner.load_s(name, model, size),
        service_s=learner.service_s(name, model, profile.prompt_tokens)
        if (resident or loading) and (busy >= slots or not options_match)
        else 0.0,
        evict_s=evict,
        success=learner.success(name),
        displaced_tokens=displaced_tokens,
    )


def wait_on(
    view: NodeView,
    profile: RequestProfile,
    learner: Learner,
    probe: Probe,
    ratio: float,
    already_waiting: int,
    now: float,
) -> None:
    """Make `view` (the node's view for the request, a copy nothing else holds) the node as the
    request would find it by waiting for its busy slots that hold a prefix of the prompt: the
    requests already waiting for the node go first (they count as in flight), and the wait is
    what remains of the current request in the slot plus a whole request for each round of
    those slots that the requests waiting ahead take."""
    service = learner.service_s(view.name, profile.model, profile.prompt_tokens)
    remaining = max(service - (now - probe.waiting_since), 0.1 * service)
    slots = max(probe.waiting_slots, 1)
    view.cached_tokens = round(probe.waiting_cached * ratio)
    view.displaced_tokens = 0.0
    view.model_in_flight = max(view.model_in_flight, view.num_parallel) + already_waiting
    view.service_s = service
    view.slot_wait_s = remaining + already_waiting // slots * service


def demand_by_model(nodes: list[NodeState], learner: Learner) -> dict[str, float]:
    """Model -> how costly losing one loaded copy is: its popularity relative to the most
    requested model, divided by how many of these nodes hold it."""
    copies: dict[str, int] = {}
    for node in nodes:
        for model in (node.loaded.keys() | node.recent.keys()) - node.evicting.keys():
            copies[model] = copies.get(model, 0) + 1
    popularity = learner.demand_map()
    return {model: popularity.get(model, 0.0) / count for model, count in copies.items()}


def planned_victims(node: NodeState, model: str, learner: Learner) -> list[Runner]:
    """The runners Ollama will unload on `node` to load `model` there."""
    if not _might_evict(node, model):
        return []
    return victims(
        runners(node, learner, exclude=model),
        model_size(node.models.get(model)),
        vram_bytes(node),
        max_loaded(node),
    )
