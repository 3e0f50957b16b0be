"""Warm-ups (forward/warmup.py), end to end against simulated nodes: the proxy copies a group's
system prompt into an idle slot while the slot holding it is busy, as a request Ollama serves
without loading anything, and the group's next request finds it there."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import orjson
import pytest

import sollol_proxy.forward.warmup as warmup
from sollol_proxy.app import FLEET, PROXY
from sollol_proxy.fleet.health import State
from sollol_proxy.simulator.kvcache import render_chat
from sollol_proxy.wire.headers import NODE_HEADER
from tests.conftest import ClusterFactory, eventually
from tests.fleet.test_cache_routing import MODEL, NODE, SYSTEM, chat


async def stats(http: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with http.get(url + "/sollol/stats") as response:
        return orjson.loads(await response.read())["prompt_cache"]["warmups"]


async def used(http: aiohttp.ClientSession, url: str, names: str) -> None:
    """One short request pinned to each node: the model is loaded there, with the runner
    options the proxy has seen (a warm-up goes only where it cannot make Ollama load or reload)."""
    for name in names:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
        async with http.post(url + "/api/chat", json=body, headers={NODE_HEADER: name}) as r:
            assert r.status == 200


async def test_a_busy_groups_system_prompt_is_copied_into_an_idle_slot(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(*(dict(NODE, name=name) for name in "abcd"))
    await used(http, made.url, "abc")  # the model is not loaded on d
    loads = {name: made.node(name).stats.loads for name in "abcd"}
    # The group's only copy is busy with this request while two slots are idle: the proxy
    # copies the system prompt into one of them.
    home, _ = await chat(http, made.url, "first user: how do I rotate the keys?")
    counts: dict[str, int] = {}
    for _ in range(100):
        counts = await stats(http, made.url)
        if counts["done"]:
            break
        await asyncio.sleep(0.05)
    assert counts == {"sent": 1, "done": 1, "failed": 0, "tokens": counts["tokens"]}
    (warmed,) = [name for name in "abc" if name != home and len(made.node(name).slot_uses) > 1]
    # What the group's requests start with, alone: the node keeps exactly those tokens.
    assert made.node(warmed).slot_uses[-1].prompt == render_chat(
        [{"role": "system", "content": SYSTEM}]
    )
    assert {name: made.node(name).stats.loads for name in "abcd"} == loads  # nothing loaded
    assert not made.node("d").slot_uses
    # With both copies idle nothing more is copied; with the first one busy again, the next
    # question of the group does not wait for it, nor pays the prompt: it finds the copy.
    long = asyncio.create_task(chat(http, made.url, "second user: explain it all", tokens=300))
    fleet = made.proxy.runner.app[FLEET]
    await eventually(lambda: sum(n.model_in_flight.get(MODEL, 0) for n in fleet.nodes.values()))
    busy = next(n for n in fleet.nodes.values() if n.model_in_flight.get(MODEL))
    node, final = await chat(http, made.url, "third user: and the certificates?")
    assert {node, busy.name} == {home, warmed} and not long.done()
    assert made.node(node).slot_uses[-1].cached_tokens > 2500
    assert final["prompt_eval_duration"] < 0.1 * final["prompt_eval_count"] / 4000 * 1e9
    await long
    assert (await stats(http, made.url))["sent"] == 1
    async with http.get(made.url + "/metrics") as response:
        text = await response.text()
    assert 'sollol_prompt_cache_warmups_total{outcome="done"} 1.0' in text


async def test_no_copy_with_one_idle_slot_left(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(NODE, name="a"), dict(NODE, name="b"))
    await used(http, made.url, "ab")
    home, _ = await chat(http, made.url, "first user: how do I rotate the keys?")
    long = asyncio.create_task(chat(http, made.url, "second user: explain it all", tokens=120))
    fleet = made.proxy.runner.app[FLEET]
    await eventually(lambda: fleet.nodes[home].model_in_flight.get(MODEL) == 1)
    await long
    # While the copy was busy only one slot was idle: a client may need it, so no warm-up.
    assert await stats(http, made.url) == {"sent": 0, "done": 0, "failed": 0, "tokens": 0}
    other = "b" if home == "a" else "a"
    assert len(made.node(other).slot_uses) == 1  # the pinned one


async def test_warmups_off_send_nothing(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # The first test's fleet and request, where a copy is made, with `routing.warmups: false`.
    made = await cluster(*(dict(NODE, name=name) for name in "abc"), routing__warmups=False)
    await used(http, made.url, "abc")
    await chat(http, made.url, "first user: how do I rotate the keys?")
    await asyncio.sleep(0.3)  # a copy is sent within a few ms of the slot change
    assert await stats(http, made.url) == {"sent": 0, "done": 0, "failed": 0, "tokens": 0}
    assert sum(len(made.node(name).slot_uses) for name in "abc") == 4  # three pinned, one chat


def warmer_of(made: object) -> warmup.Warmer:
    parts = made.proxy.runner.app[PROXY].parts  # type: ignore[attr-defined]
    return next(part for part in parts if isinstance(part, warmup.Warmer))


async def test_what_clients_send_is_kept_within_bounds(
    cluster: ClusterFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await cluster(dict(NODE, name="a", prompt_tokens_per_s=10**7))  # prefill: no wait
    warmer = warmer_of(made)
    monkeypatch.setattr(warmup, "KEPT_CHARS", 3 * (len(SYSTEM) + 10))
    monkeypatch.setattr(warmup, "MESSAGE_CHARS", 2 * len(SYSTEM))

    async def send(model: str, system: str) -> None:
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "hi"},
            ],
            "stream": False,
            "options": {"num_predict": 1},
        }
        async with http.post(made.url + "/api/chat", json=body) as response:
            await response.read()

    await send("nowhere:latest", SYSTEM)  # a model no node has: nothing kept
    assert warmer.kept == (0, 0)
    for n in range(5):  # distinct long system prompts: the oldest are forgotten
        await send(MODEL, f"{n:10d}{SYSTEM}")
    assert warmer.kept == (3, 3 * (len(SYSTEM) + 10))
    await send(MODEL, SYSTEM * 3)  # one message over a share of the bound: not kept
    assert warmer.kept == (3, 3 * (len(SYSTEM) + 10))


async def test_a_warm_up_counts_among_the_requests_running_on_its_node(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # A client's request sent beside it is learned from with the right count (fleet/beliefs.py).
    made = await cluster(*(dict(NODE, name=name) for name in "abc"))
    await used(http, made.url, "abc")
    first = asyncio.create_task(chat(http, made.url, "first user: how do I rotate the keys?"))
    fleet = made.proxy.runner.app[FLEET]
    running: dict[str, int] = {}
    for _ in range(200):
        running = {
            name: node.beliefs.slots[MODEL].running
            for name, node in fleet.nodes.items()
            if MODEL in node.beliefs.slots
        }
        if sum(running.values()) == 2:
            break
        await asyncio.sleep(0.005)
    # The client's request and the warm-up, each on its own node.
    assert sorted(running.values()) == [0, 1, 1], running
    home, _ = await first
    assert running[home] == 1
    await eventually(lambda: all(n.beliefs.slots[MODEL].running == 0 for n in fleet.nodes.values()))
    assert (await stats(http, made.url))["done"] == 1


async def test_a_group_whose_template_differs_is_not_copied(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(NODE, name="a", prompt_tokens_per_s=10**7))
    warmer = warmer_of(made)
    for extra in ({"think": True}, {"tools": [{"type": "function"}]}, {"shift": False}):
        body = {
            "model": MODEL,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}],
            "stream": False,
            "options": {"num_predict": 1},
            **extra,
        }
        async with http.post(made.url + "/api/chat", json=body) as response:
            await response.read()
    assert warmer.kept == (0, 0)


async def test_looking_for_a_copy_ends_no_ejection_nor_cool_down(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(NODE, name="a"), dict(NODE, name="b"))
    await chat(http, made.url, "first user: how do I rotate the keys?")
    fleet = made.proxy.runner.app[FLEET]
    for node in fleet.nodes.values():
        node.health.busy("queue full", others_available=True)
    warmer_of(made).soon(MODEL)
    await asyncio.sleep(warmup.GATHER_S + 0.05)
    assert all(n.health.current() is State.BUSY for n in fleet.nodes.values())


async def test_a_reload_turns_warm_ups_off(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(NODE, name="a", prompt_tokens_per_s=10**7))
    warmer = warmer_of(made)
    await chat(http, made.url, "first user: how do I rotate the keys?")
    assert warmer.kept == (1, len(SYSTEM))
    proxy = made.proxy.runner.app[PROXY]
    proxy.apply(dataclasses.replace(proxy.live.config, warmups=False))
    assert warmer.kept == (0, 0)  # forgotten, and nothing more is kept
    await chat(http, made.url, "second user: and the certificates?")
    assert warmer.kept == (0, 0)
