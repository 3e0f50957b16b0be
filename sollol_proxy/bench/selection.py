"""How long the whole per-request selection takes: `Selector` and admission over a live fleet.

A fleet of `nodes` nodes given as URLs only, as the product is used (`configured`: with their
slots and memory told; 20 models on disk and 3 loaded per node, requests in flight, every
node's two slots holding a conversation under one of five system prompts), and
for each request what the proxy does between reading its body and sending it: the candidates
(`Selector.for_model`), those with a free slot (`Admission.free`), the choice (`_rank`: the
views, the prompt-cache probe, the ranking, the decision record), then the dispatch and its end
as they update the fleet's state (`Admission.take`, a lease, the prompt cache's `take` and
`finish`, the learner's `observe_success`, `give`), which is what a selection kept up to date
incrementally pays for.
"""

from __future__ import annotations

import gc
import random
import time
from typing import NamedTuple

from aiohttp.test_utils import make_mocked_request

from sollol_proxy.admission.admission import Admission
from sollol_proxy.config import load_config
from sollol_proxy.config.policies import Priors
from sollol_proxy.fleet.capacity import model_slots
from sollol_proxy.fleet.decisions import DecisionLog
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.node import Lease
from sollol_proxy.fleet.plan import Candidates
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.fleet.selector import Selector
from sollol_proxy.routing.analysis import RequestProfile, analyze
from sollol_proxy.wire.timings import Timings

MODELS = [f"model-{i}:latest" for i in range(20)]


def _chat(system: str) -> dict[str, object]:
    return {
        "model": MODELS[0],
        "messages": [
            {"role": "system", "content": system * 4000},
            {"role": "user", "content": "hello"},
        ],
    }


def _profile(system: str) -> RequestProfile:
    return analyze("/api/chat", _chat(system), MODELS[0], True)


class Cost(NamedTuple):
    """Microseconds of CPU per request (the thread's CPU time: this shared machine's other
    work does not count, as it would in elapsed time)."""

    selection: float  # from its candidates to the node it goes to
    bookkeeping: float  # its dispatch and its end, as they update what selection reads


async def measure_selection(
    nodes: int, decisions: int, seed: int = 1, *, configured: bool = False
) -> Cost:
    rng = random.Random(seed)
    told = {"num_parallel": 2, "vram": "24GiB"} if configured else {}
    config = load_config(
        None,
        env={},
        overrides={"nodes": [{"url": f"n{i}", "name": f"n{i}", **told} for i in range(nodes)]},
    )
    cache, learner = PromptCache(), Learner(Priors())
    fleet = Fleet(config, None, cache)  # type: ignore[arg-type]  # no probes here
    admission = Admission(config.queue)
    selector = Selector(config, fleet, learner, cache, DecisionLog(config.decisions_kept))
    for state in fleet.nodes.values():
        state.healthy = True
        state.models = {m: {"model": m, "size": 5 * 2**30} for m in MODELS}
        for m in rng.sample(MODELS, 3):
            state.loaded[m] = {"model": m, "size_vram": 5 * 2**30}
            state.model_in_flight[m] = rng.randint(0, 3)
        state.in_flight = sum(state.model_in_flight.values())
    for m in MODELS:
        learner.observe_request(m)
        learner.observe_request(m)
    # Every node's two slots hold a conversation under one of five system prompts.
    for state in fleet.nodes.values():
        for _ in range(2):
            keys = _profile(str(rng.randint(0, 4))).prefix_keys
            cache.record(MODELS[0], state.name, keys, slots=2)
    # The requests come under those five system prompts, in turn.
    profiles = [_profile(str(i)) for i in range(5)]
    request = make_mocked_request("POST", "/api/chat")
    # As the proxy does once it serves (server.py): what start-up made is not walked again by
    # the collector's full collections, which then see only what requests leave behind.
    gc.freeze()
    selection = bookkeeping = 0.0
    for i in range(decisions):
        start = time.thread_time()
        profile = profiles[i % len(profiles)]
        routed = await selector.for_model(request, profile, f"r{i}", 5)
        assert isinstance(routed, Candidates)
        free = admission.free(routed.nodes(), profile.model)
        plan = routed.choose(free)
        node = plan.targets[0].node
        chosen = time.thread_time()
        admission.take(node, profile.model)
        lease = Lease(node, profile.model)
        ticket = cache.take(
            node.name, profile.model, profile.prefix_keys, model_slots(node, profile.model)
        )
        assert ticket is not None
        # Ollama's timings, a little different each time: what every answer teaches.
        timings = Timings(1.0, 0.0, 1000, rng.uniform(0.1, 0.2), 50, rng.uniform(0.8, 1.0))
        lease.end()
        learner.observe_success(
            node.name,
            profile.model,
            profile.task,
            timings,
            clean_load=False,
            cached_tokens=ticket.take.cached,
            ttft_s=0.2,
            elapsed_s=1.0,
            estimated_prompt_tokens=profile.prompt_tokens,
        )
        cache.finish(ticket, answer=50)
        admission.give(node, profile.model)
        selection += chosen - start
        bookkeeping += time.thread_time() - chosen
    gc.unfreeze()
    return Cost(selection / decisions * 1e6, bookkeeping / decisions * 1e6)
