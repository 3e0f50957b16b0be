"""A dispatch updates the node state at once, and only a load that happened evicts anything."""

from __future__ import annotations

from typing import Any

import pytest

from sollol_proxy.config import load_config
from sollol_proxy.config.policies import Priors
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.fleet.snapshot import demand_by_model, node_view
from sollol_proxy.forward.attempt import (
    PROBE_PATIENCE_FACTOR,
    PROBE_PATIENCE_S,
    Attempt,
    DispatchObserver,
)
from sollol_proxy.routing.analysis import analyze

GiB = 2**30


def setup(**node: Any) -> tuple[Fleet, PromptCache, Learner]:
    config = load_config(None, env={}, overrides={"nodes": [{"url": "a", "name": "a", **node}]})
    cache = PromptCache()
    fleet = Fleet(config, None, cache)  # type: ignore[arg-type]  # no probes in these tests
    state = fleet.nodes["a"]
    state.healthy = True
    state.models = {m: {"model": m, "size": 4 * GiB} for m in ("x:latest", "y:latest", "z:latest")}
    state.loaded = {"x:latest": {"model": "x:latest", "size_vram": 4 * GiB, "context_length": 8192}}
    return fleet, cache, Learner(Priors())


def observer(
    fleet: Fleet, cache: PromptCache, learner: Learner, model: str, **payload: Any
) -> DispatchObserver:
    profile = analyze(
        "/api/chat",
        {"model": model, "messages": [{"role": "user", "content": "hi"}], **payload},
        model,
        True,
    )
    return DispatchObserver(fleet, learner, cache, profile)


def x_cached_on_a(cache: PromptCache) -> Any:
    """Node a served a conversation of x: its prefix is in a's cache."""
    payload = {"model": "x:latest", "messages": [{"role": "user", "content": "hi"}]}
    keys = analyze("/api/chat", payload, "x:latest", True).prefix_keys
    cache.record("x:latest", "a", keys)
    return keys


async def test_a_load_that_fails_evicts_nothing() -> None:
    fleet, cache, learner = setup(max_loaded_models=1)
    node = fleet.nodes["a"]
    keys = x_cached_on_a(cache)
    async with observer(fleet, cache, learner, "y:latest").attempt(node) as attempt:
        assert attempt.cold and attempt.victims == ["x:latest"]
        # While y loads, x is on its way out here and y is being loaded.
        assert not node.is_resident("x:latest") and node.loading == {"y:latest": 1}
        attempt.failed()  # e.g. the node refused: nothing happened there
    assert node.is_resident("x:latest") and node.loading == {} and node.evicting == {}
    assert cache.probe("x:latest", keys, {"a": 1})["a"].cached == keys[-1][1]


async def test_a_load_that_happened_evicts_and_forgets_the_cache() -> None:
    fleet, cache, learner = setup(max_loaded_models=1)
    node = fleet.nodes["a"]
    keys = x_cached_on_a(cache)
    async with observer(fleet, cache, learner, "y:latest").attempt(node) as attempt:
        attempt.first_byte(200)
        assert node.is_resident("y:latest") and not node.is_resident("x:latest")
    assert "x:latest" not in node.loaded and node.in_flight == 0 and node.model_in_flight == {}
    assert "a" not in cache.probe("x:latest", keys, {"a": 1})


async def test_pending_loads_count_models_not_requests() -> None:
    fleet, cache, learner = setup()
    node = fleet.nodes["a"]
    first = observer(fleet, cache, learner, "y:latest")
    second = observer(fleet, cache, learner, "y:latest")
    async with first.attempt(node), second.attempt(node):
        assert node.loading == {"y:latest": 2}
        assert node.loads_pending("z:latest") == 1 and node.loads_pending("y:latest") == 0
        view = node_view(node, second.profile, learner, 0, demand_by_model([node], learner))
        assert view.loading and view.model_in_flight == 2
    assert node.loading == {}


async def test_runner_options_match_uses_the_loaded_context_length() -> None:
    fleet, cache, learner = setup()
    node = fleet.nodes["a"]
    demand = demand_by_model([node], learner)

    def view(**options: Any):  # type: ignore[no-untyped-def]
        profile = observer(fleet, cache, learner, "x:latest", options=options).profile
        return node_view(node, profile, learner, 0, demand)

    assert view().options_match  # no num_ctx asked for: nothing to compare
    assert view(num_ctx=8192).options_match  # /api/ps says the runner has 8192
    assert not view(num_ctx=4096).options_match


def streamed_probe(**options: Any) -> tuple[DispatchObserver, Attempt]:
    """A streamed chat probing node a, where x is loaded (warm: not a cold load)."""
    fleet, cache, learner = setup()
    chat = observer(fleet, cache, learner, "x:latest", options=options)
    attempt = Attempt(chat, fleet.nodes["a"])
    attempt.probe = True
    return chat, attempt


def test_a_probe_whose_runner_options_differ_gets_no_patience() -> None:
    chat, attempt = streamed_probe(num_ctx=4096)
    node, model = attempt.node, chat.profile.model
    node.runner_options[model] = chat.profile.runner_options
    assert chat.probe_patience(attempt, wait_left=60.0) is not None
    # The runner there was loaded with other load-time options: Ollama reloads it first, so a
    # late first byte is the load, not a wait for a slot.
    node.runner_options[model] = (("num_ctx", 8192),)
    assert chat.probe_patience(attempt, wait_left=60.0) is None


def test_the_patience_is_at_least_three_times_the_measured_time_to_first_byte() -> None:
    chat, attempt = streamed_probe()
    node, model, learner = attempt.node, chat.profile.model, chat.learner
    node.runner_options[model] = chat.profile.runner_options
    priced = chat.probe_patience(attempt, wait_left=60.0)
    assert priced is not None and priced < 1.0  # a short prompt and one token at the priors
    # Its streams' first bytes came after 2 s (a node slower than priced, waits included).
    learner.observe_success(
        "a", model, "chat", None, clean_load=False, cached_tokens=0, ttft_s=2.0, elapsed_s=2.5
    )
    patience = chat.probe_patience(attempt, wait_left=60.0)
    assert patience == pytest.approx(PROBE_PATIENCE_S + PROBE_PATIENCE_FACTOR * 2.0)
