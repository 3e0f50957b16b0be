"""Routing on what the nodes' slots hold, end to end: shared prompts, waiting for a busy slot, and
the prediction scored against Ollama's timing fields (`/sollol/stats`, `/metrics`)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import orjson

from sollol_proxy.app import FLEET
from tests.conftest import ClusterFactory, eventually

MODEL = "llama3.2:latest"
SYSTEM = "You are the support assistant of the platform team; answer from the runbook. " * 150
NODE = dict(models=[MODEL], deterministic=False, prompt_tokens_per_s=4000, token_delay=0.01)


async def chat(
    http: aiohttp.ClientSession, url: str, question: str | list[dict[str, str]], tokens: int = 5
) -> tuple[str, dict[str, Any]]:
    """A question under the shared system prompt (or a whole conversation); (node, final object)."""
    messages = (
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        if isinstance(question, str)
        else question
    )
    body = orjson.dumps(
        {"model": MODEL, "messages": messages, "stream": False, "options": {"num_predict": tokens}}
    )
    async with http.post(url + "/api/chat", data=body) as response:
        assert response.status == 200
        return response.headers["X-Sollol-Node"], orjson.loads(await response.read())


async def test_every_conversation_of_a_group_finds_the_shared_system_prompt(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(NODE, name="a"), dict(NODE, name="b"), dict(NODE, name="c"))
    home, _ = await chat(http, made.url, "first user: how do I rotate the keys?")
    for user in range(3):  # other users, other questions, the same system prompt
        node, _ = await chat(http, made.url, f"user {user}: where are the backups?")
        assert node == home
    uses = made.node(home).slot_uses
    assert len(uses) == 4 and all(use.cached_tokens > 2500 for use in uses[1:])
    # /sollol/nodes shows what the proxy believes the slots hold: the last prompt and answer.
    async with http.get(made.url + "/sollol/nodes") as response:
        nodes = {n["name"]: n for n in orjson.loads(await response.read())["nodes"]}
    believed = nodes[home]["cache_slots"][MODEL]
    assert [slot["busy"] for slot in believed] == [False]
    assert abs(believed[0]["tokens"] - uses[-1].prompt_tokens) < 0.05 * uses[-1].prompt_tokens
    assert all(not nodes[name]["cache_slots"] for name in nodes if name != home)


async def test_a_request_waits_for_the_busy_slot_that_holds_its_prompt(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(NODE, name="a"), dict(NODE, name="b"))
    home, _ = await chat(http, made.url, "first user: how do I rotate the keys?")
    other = "b" if home == "a" else "a"
    long = asyncio.create_task(chat(http, made.url, "second user: explain it all", tokens=220))
    fleet = made.proxy.runner.app[FLEET]
    await eventually(lambda: fleet.nodes[home].model_in_flight.get(MODEL) == 1)
    # The home node's only slot is busy and the other node is idle, but a full prefill there
    # costs more than waiting for the slot that holds the system prompt.
    node, final = await chat(http, made.url, "third user: and the certificates?")
    assert node == home and (await long)[0] == home
    assert made.node(home).slot_uses[-1].cached_tokens > 2500
    assert final["prompt_eval_duration"] < 0.1 * final["prompt_eval_count"] / 4000 * 1e9
    assert not made.node(other).slot_uses  # nothing went there


async def test_a_hold_that_runs_out_is_weighed_again_once(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(NODE, name="a"), dict(NODE, name="b"))
    home, _ = await chat(http, made.url, "first user: how do I rotate the keys?")
    # The home slot stays busy 2.2 s: longer than one hold (it ran out at 1.5-1.8 s, and the
    # request then went to the other node), not than two.
    long = asyncio.create_task(chat(http, made.url, "second user: explain it all", tokens=220))
    fleet = made.proxy.runner.app[FLEET]
    await eventually(lambda: fleet.nodes[home].model_in_flight.get(MODEL) == 1)
    node, _ = await chat(http, made.url, "third user: and the certificates?")
    assert node == home and (await long)[0] == home
    assert made.node(home).slot_uses[-1].cached_tokens > 2500


async def test_the_prediction_is_scored_and_a_restart_behind_the_proxys_back_is_noticed(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(NODE, name="a", num_parallel=2), health__interval=3600, inventory__interval=3600
    )
    fleet = made.proxy.runner.app[FLEET]
    await chat(http, made.url, "first user: how do I rotate the keys?")  # a full prefill: speed
    # Two users at once: the first finds the system prompt in slot 0, the second gets slot 1,
    # empty, and evaluates everything (both predicted right).
    third = asyncio.create_task(chat(http, made.url, "third user: explain it all", tokens=30))
    await eventually(lambda: fleet.nodes["a"].model_in_flight.get(MODEL) == 1)
    second = "second user: where are the backups? Here is the log: " + "backup ok. " * 200
    _, answer = await chat(http, made.url, second)
    await third
    score = (await stats(http, made.url))["prompt_cache"]
    assert (score["requests"], score["agreement"], score["observed_hit_ratio"]) == (2, 1.0, 0.5)

    await made.node("a").restart()  # the runner and its cache are gone; the proxy cannot know
    await chat(http, made.url, "fourth user: and the certificates?")  # predicted hit: a miss
    score = (await stats(http, made.url))["prompt_cache"]
    assert (score["requests"], score["agreement"]) == (3, round(2 / 3, 3))
    assert score["nodes"]["a"][MODEL]["predicted_hit_ratio"] == round(2 / 3, 3)

    # What the proxy believed slot 1 held (the second user's conversation) is forgotten: its
    # follow-up is predicted to find the system prompt only (the fourth user's slot), as it does.
    before = score
    follow_up = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": second},
        answer["message"],
        {"role": "user", "content": "and how often do they run?"},
    ]
    await chat(http, made.url, follow_up)
    score = (await stats(http, made.url))["prompt_cache"]
    assert (score["requests"], score["agreement"]) == (4, 0.75)
    predicted = score["predicted_cached_tokens"] - before["predicted_cached_tokens"]
    observed = score["observed_cached_tokens"] - before["observed_cached_tokens"]
    assert 2500 < predicted < 3000 and abs(predicted - observed) < 0.05 * predicted

    async with http.get(made.url + "/metrics") as response:
        metrics = (await response.read()).decode()
    labels = f'model="{MODEL}",node="a"'
    assert f"sollol_prompt_cache_judged_requests_total{{{labels}}} 4.0" in metrics
    assert f'sollol_prompt_cache_hits_total{{{labels},source="predicted"}} 3.0' in metrics
    assert f'sollol_prompt_cache_hits_total{{{labels},source="observed"}} 2.0' in metrics
    assert f"sollol_prompt_cache_agreements_total{{{labels}}} 3.0" in metrics


async def stats(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/sollol/stats") as response:
        return orjson.loads(await response.read())


async def test_a_node_full_by_a_growing_belief_is_priced_as_either_outcome(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    """Given its URL only, a node with two slots is believed to have one until it is seen
    running two. With that one slot busy, holding the group's system prompt, the next request
    of the group is priced as finding half of it: it may wait for that slot, or start at once
    in one the proxy does not know of, as it does here, finding nothing (it was priced as
    finding it all, a predicted hit that missed)."""
    made = await cluster(dict(NODE, name="a", num_parallel=2), urls_only=True, queue__enabled=False)
    await chat(http, made.url, "first user: how do I rotate the keys?")
    long = asyncio.create_task(chat(http, made.url, "second user: explain it all", tokens=220))
    fleet = made.proxy.runner.app[FLEET]
    (node,) = fleet.nodes.values()  # named after its URL
    await eventually(lambda: node.model_in_flight.get(MODEL) == 1)
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "third user: and the certificates?"},
    ]
    body = orjson.dumps({"model": MODEL, "messages": messages, "stream": False})
    async with http.post(made.url + "/api/chat", data=body) as response:
        route = response.headers["X-Sollol-Route"]
        final = orjson.loads(await response.read())
    shown = re.search(r"([\d.]+)k cached tokens, slot wait", route)
    assert shown is not None, route
    assert 0.4 < float(shown.group(1)) * 1000 / final["prompt_eval_count"] < 0.6
    use = made.node("a").slot_uses[-1]
    assert use.slot == 1 and use.cached_tokens == 0 and not long.done()
    await long
