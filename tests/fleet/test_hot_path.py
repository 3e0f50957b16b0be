"""The per-request selection's structure (issue #12; speed lives in `bench scorer`, not here):
nothing per node is made again for a request that finds the fleet as the last one left it,
the failover list makes only the entries read, and a burst of selections leaves no cyclic
garbage."""

from __future__ import annotations

import collections
import gc

import pytest
from aiohttp.test_utils import make_mocked_request

from sollol_proxy.admission.admission import Admission
from sollol_proxy.config import load_config
from sollol_proxy.config.policies import Priors
from sollol_proxy.fleet import selector as selector_module
from sollol_proxy.fleet import views
from sollol_proxy.fleet.decisions import DecisionLog
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.plan import Candidates, Plan
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.fleet.selector import Selector
from sollol_proxy.routing.analysis import RequestProfile, analyze
from sollol_proxy.routing.ranking import Ranking

GiB = 2**30
MODEL = "m:latest"


def selector_of(count: int) -> tuple[Selector, Fleet, Admission]:
    """A fleet of `count` nodes given as URLs only, each with the model on disk and loaded."""
    nodes = [{"url": f"n{i}", "name": f"n{i}"} for i in range(count)]
    config = load_config(None, env={}, overrides={"nodes": nodes})
    cache, learner = PromptCache(), Learner(Priors())
    fleet = Fleet(config, None, cache)  # type: ignore[arg-type]  # no probes here
    for node in fleet.nodes.values():
        node.healthy = True
        fleet.saw_tags(node, {"models": [{"model": MODEL, "size": 4 * GiB}]})
        node.loaded[MODEL] = {"model": MODEL, "size_vram": 4 * GiB}
    selector = Selector(config, fleet, learner, cache, DecisionLog(config.decisions_kept))
    return selector, fleet, Admission(config.queue)


def profile(text: str) -> RequestProfile:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    return analyze("/api/chat", payload, MODEL, True)


# Made once: a mocked request is mock objects, which are cyclic garbage of their own.
REQUEST = make_mocked_request("POST", "/api/chat")


async def select(selector: Selector, admission: Admission, i: int, text: str = "hi") -> Plan:
    routed = await selector.for_model(REQUEST, profile(text), f"r{i}", 5)
    assert isinstance(routed, Candidates)
    plan = routed.choose(admission.free(routed.nodes(), MODEL))
    assert plan.hold is None
    return plan


async def test_a_request_that_finds_the_fleet_unchanged_makes_no_view_again() -> None:
    selector, _, admission = selector_of(40)
    await select(selector, admission, 0)
    kept = selector._views.kept(MODEL)
    views = {name: entry.view for name, entry in kept.items()}
    assert len(views) == 40
    for i in range(1, 5):  # nothing dispatched: no node changed
        await select(selector, admission, i)
    # The same view objects (an epoch may turn a node's over, at most a few per request).
    same = sum(kept[name].view is view for name, view in views.items())
    assert same >= 40 - 4 * 2, same


async def test_the_failover_list_makes_only_the_entries_read() -> None:
    selector, _, admission = selector_of(100)
    plan = await select(selector, admission, 0)
    targets = plan.targets
    assert isinstance(targets, Ranking) and len(targets) == 100
    assert targets.made == 0  # ranked, but no Target made yet
    first = targets[0]
    assert targets.made == 1 and targets[0] is first  # made once
    assert targets[1].node is not first.node and targets.made == 2
    everything = list(targets)
    assert targets.made == 100 and everything[:2] == [first, targets[1]]
    assert len({t.node.name for t in everything}) == 100  # every candidate, once


async def test_a_burst_of_selections_leaves_no_cyclic_garbage() -> None:
    selector, _, admission = selector_of(30)
    for i in range(20):  # warm: views, the prompt cache's runners, the decision ring
        await select(selector, admission, i, f"conversation {i % 5}")
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector frees is kept in gc.garbage instead
    try:
        for i in range(200):
            plan = await select(selector, admission, i, f"conversation {i % 5}")
            node = plan.targets[0].node
            admission.take(node, MODEL)
            assert plan.targets[1].node is not node  # what the forwarder reads of its list
            admission.give(node, MODEL)
        del plan
        gc.collect()
        garbage = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not garbage, garbage.most_common(10)


async def test_a_waiting_view_is_a_copy_of_the_kept_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that may wait for a busy slot holding its prompt prices that node from a copy
    of the node's kept view: a second such request, the fleet unchanged, makes no view."""
    selector, fleet, _ = selector_of(2)
    cache = selector._prompt_cache
    asked = profile("a long conversation " * 200)
    busy = cache.take("n0", MODEL, asked.prefix_keys, 1)  # n0's one slot holds it, busy
    assert busy is not None
    slots = {"n0": 1, "n1": 1}
    assert cache.probe(MODEL, asked.prefix_keys, slots)["n0"].waiting_cached > 0
    made = []
    real = views.node_view
    monkeypatch.setattr(views, "node_view", lambda *a: made.append(a[0].name) or real(*a))
    waits: list[str] = []
    wait_on = selector_module.wait_on
    monkeypatch.setattr(
        selector_module, "wait_on", lambda view, *a: waits.append(view.name) or wait_on(view, *a)
    )
    nodes = list(fleet.nodes.values())
    first = selector._rank(nodes, asked, "r0", 5)
    assert sorted(made) == ["n0", "n1"]  # the two kept views, made once
    kept = selector._views.kept(MODEL)["n0"].view
    made.clear()
    second = selector._rank(nodes, asked, "r1", 5)
    assert made == []  # neither candidate nor the waiting view made again
    assert waits.count("n0") == 2  # each request priced the wait for n0's busy slot
    assert kept is selector._views.kept(MODEL)["n0"].view  # the kept view is not the one changed
    assert kept.slot_wait_s is None and kept.cached_tokens == 0
    assert (first.hold is None) == (second.hold is None)
