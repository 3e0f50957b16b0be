"""The first prefixes each model's runners hold, counted as the slots change, against a count
made afresh from every runner's slots after each of many random changes."""

from __future__ import annotations

import random

from sollol_proxy.fleet.prompt_cache import PromptCache, Ticket
from sollol_proxy.routing.analysis import analyze
from sollol_proxy.routing.slot_match import PrefixKeys

NODES = [f"n{i}" for i in range(8)]
MODELS = ["m", "other"]


def chat(system: str, *turns: str) -> PrefixKeys:
    roles = ["system"] + ["user", "assistant"] * len(turns)
    contents = [system, *turns]
    messages = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=False)]
    return analyze("/api/chat", {"model": "m", "messages": messages}, "m", True).prefix_keys


def afresh(cache: PromptCache, model: str, nodes: list[str]) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for node in nodes:
        for first in {slot.keys[0] for slot in cache.slots(node, model) if slot.keys}:
            counts[first] = counts.get(first, 0) + 1
    return counts


def test_the_counts_kept_equal_a_count_afresh_after_every_change() -> None:
    rng = random.Random(5)
    cache = PromptCache()
    prompts = [chat(f"system {s} " * 300, f"question {q}") for s in range(4) for q in range(3)]
    running: list[Ticket] = []
    for step in range(3000):
        model, node = rng.choice(MODELS), rng.choice(NODES)
        keys = rng.choice(prompts)
        action = rng.random()
        if action < 0.35:
            ticket = cache.take(node, model, keys, rng.randint(1, 4), fresh=rng.random() < 0.05)
            assert ticket is not None
            running.append(ticket)
        elif action < 0.6 and running:
            ticket = running.pop(rng.randrange(len(running)))
            served = rng.random() < 0.9
            observed = rng.choice([None, 0, 2000])
            cache.finish(ticket, answer=40, served=served, prompt_count=2000, observed=observed)
        elif action < 0.75:
            cache.reserve(node, model, keys, rng.randint(1, 4), now=step * 0.01)
        elif action < 0.8:
            cache.forget(node, [model])
        else:
            # A probe with some of the nodes as candidates (a belief that grew resizes some).
            nodes = rng.sample(NODES, rng.randint(1, len(NODES)))
            slots = {n: rng.randint(1, 5) for n in nodes}
            cache.probe(model, keys, slots)
        for model in MODELS:
            held = [n for n in NODES if cache.slots(n, model)]
            if not held:
                continue
            some = rng.sample(held, rng.randint(1, len(held)))
            for nodes in (held, some):
                assert cache.first_copies(model, set(nodes)) == afresh(cache, model, nodes)


def test_a_runner_found_to_have_more_slots_is_counted_again() -> None:
    cache = PromptCache()
    a, b = chat("system a " * 300, "question"), chat("system b " * 300, "question")
    for keys in (a, b):
        cache.record("m", "n0", keys, slots=1)  # b takes the one slot a held
    assert cache.first_copies("m", {"n0"}) == {b[0][0]: 1}
    assert cache.first_copies("never asked for", {"n0"}) == {}
    # The belief grows to two slots: replayed, the runner held a all along as well.
    cache.probe("m", a, {"n0": 2})
    assert cache.first_copies("m", {"n0"}) == {a[0][0]: 1, b[0][0]: 1}
