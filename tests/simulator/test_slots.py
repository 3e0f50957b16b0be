"""The simulated node's parallel slots and prompt cache (reference §5.1, §5.2, §5.6, §5.7).

What the proxy will learn from: the wait for a slot shows in the final object as
total - load - prompt_eval - eval; slots are chosen like llama-server's (longest common
prefix above 10 % of the prompt, else least recently used); a node can restart with another
OLLAMA_NUM_PARALLEL. Timing fields are checked over real sockets, slot choice also on the
pure PrefixCache."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sollol_proxy.simulator import SimModel, SimulatedNode
from sollol_proxy.simulator.kvcache import PrefixCache
from sollol_proxy.simulator.scheduler import Runner, runner_slots
from tests.conftest import eventually

TOKEN_DELAY = 0.03
DECODE = 7 * TOKEN_DELAY  # num_predict=8: a delay before each token after the first


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def generate(
    session: aiohttp.ClientSession,
    node: SimulatedNode,
    prompt: str,
    *,
    model: str = "llama3.2",
    num_predict: int = 2,
) -> dict[str, Any]:
    req = {
        "model": model,
        "prompt": prompt,
        "stream": False,
        "options": {"num_predict": num_predict},
    }
    async with session.post(node.url + "/api/generate", json=req) as r:
        body = await r.read()
        assert r.status == 200, body
    return json.loads(body)


def slot_wait(reply: dict[str, Any]) -> float:
    """Seconds the request waited for a slot, as a client can derive it (§5.6)."""
    busy = reply["load_duration"] + reply["prompt_eval_duration"] + reply["eval_duration"]
    return (reply["total_duration"] - busy) / 1e9


def rendered(prompt: str) -> str:
    return f"<|user|>{prompt}\n"


# ------------------------------------------------------------------ slots and the slot wait


@pytest.mark.parametrize("num_parallel", [1, 2, 4])
async def test_slot_wait_shows_in_timing_fields(
    session: aiohttp.ClientSession, num_parallel: int
) -> None:
    async with SimulatedNode(
        models=["llama3.2"], num_parallel=num_parallel, token_delay=TOKEN_DELAY
    ) as node:
        replies = await asyncio.gather(
            *(generate(session, node, f"request {i}", num_predict=8) for i in range(4))
        )
        waits = sorted(slot_wait(r) for r in replies)
        # The k-th wave of requests waits for k requests' decoding; the first not at all.
        for i, wait in enumerate(waits):
            wave = i // num_parallel
            if wave == 0:
                assert wait < DECODE / 2, waits
            else:
                assert wait >= 0.8 * wave * DECODE, waits
        assert sum(waits) == pytest.approx(node.stats.queue_wait, abs=0.04)
        assert len(node.slots("llama3.2")) == num_parallel


async def test_one_slot_for_embedding_models_and_single_slot_families(
    session: aiohttp.ClientSession,
) -> None:
    vision = SimModel("vl:latest", family="qwen3vl")
    async with SimulatedNode(
        models=["llama3.2", "all-minilm", vision], num_parallel=4, token_delay=TOKEN_DELAY
    ) as node:
        async with session.post(
            node.url + "/api/embed", json={"model": "all-minilm", "input": "hi"}
        ) as r:
            assert r.status == 200
        replies = await asyncio.gather(
            *(generate(session, node, f"look {i}", model="vl", num_predict=8) for i in range(2))
        )
        waits = sorted(slot_wait(r) for r in replies)
        assert waits[0] < DECODE / 2 and waits[1] >= 0.8 * DECODE
        await generate(session, node, "text")
        assert [len(node.slots(m)) for m in ("all-minilm", "vl", "llama3.2")] == [1, 1, 4]


def test_runner_slots_follow_ollama() -> None:
    assert runner_slots(SimModel("a:1b"), 4) == 4
    assert runner_slots(SimModel("a:1b"), 0) == 1  # sched.go: max(OLLAMA_NUM_PARALLEL, 1)
    assert runner_slots(SimModel("e:1b", embedding_only=True), 4) == 1
    assert runner_slots(SimModel("v:1b", family="nemotron_h_omni"), 4) == 1


# ------------------------------------------------------------------ batched decode


def test_decode_factor_grows_with_busy_slots() -> None:
    runner = Runner(SimModel("a:1b"), 4096, 4, 300.0, asyncio.Semaphore(4))
    factors = []
    for busy in range(5):
        runner.busy = busy
        factors.append(runner.decode_factor(0.5))
    assert factors == [1.0, 1.0, 1.5, 2.0, 2.5]
    assert runner.decode_factor(0.0) == 1.0


async def test_decode_slows_with_busy_slots(session: aiohttp.ClientSession) -> None:
    evals: dict[float, list[int]] = {}
    for slowdown in (0.0, 1.0):
        async with SimulatedNode(
            models=["llama3.2"], num_parallel=4, token_delay=0.01, batch_slowdown=slowdown
        ) as node:
            evals[slowdown] = []
            for together in (1, 2, 4):
                replies = await asyncio.gather(
                    *(generate(session, node, f"q{i}", num_predict=11) for i in range(together))
                )
                evals[slowdown].append(min(r["eval_duration"] for r in replies))
    one, two, four = evals[1.0]
    assert one < two < four
    assert four > evals[0.0][2]  # without the knob, four busy slots decode as fast as one
    with pytest.raises(ValueError):
        SimulatedNode(batch_slowdown=-1)


# ------------------------------------------------------------------ slot choice


async def test_slot_choice_longest_prefix_else_lru(session: aiohttp.ClientSession) -> None:
    async with SimulatedNode(models=["llama3.2"], num_parallel=3) as node:

        async def served(prompt: str) -> tuple[int, int]:
            await generate(session, node, prompt)
            use = node.slot_uses[-1]
            assert use.prompt == rendered(prompt)
            return use.slot, use.cached_tokens

        alpha = "alpha " * 50
        assert await served(alpha) == (0, 0)
        assert await served("bravo " * 50) == (1, 0)  # never-used slots come first
        assert await served("charlie " * 50) == (2, 0)
        # The slot holding alpha's prompt shares most of this one: reuse it.
        assert await served(alpha + "more") == (0, len(rendered(alpha)) // 4)
        # Nothing matches: the least recently used slot (bravo's) is overwritten; the
        # little it shares ("<|user|>", 2 tokens) is reused all the same.
        assert await served("echo " * 50) == (1, 2)
        # Slot 0 shares 3 of 129 tokens, not above 10 %: LRU instead (charlie's slot).
        assert await served("alpha " + "zulu " * 100) == (2, 2)
        # 17 of 53 tokens shared with slot 0: above 10 %, so slot 0 although it is the LRU's
        # last choice.
        golf = "alpha " * 10 + "yankee " * 20
        assert await served(golf) == (0, 17)
        views = node.slots("llama3.2")
        assert [v.text.split("\n")[0] for v in views] == [
            rendered(golf).rstrip("\n"),
            rendered("echo " * 50).rstrip("\n"),
            rendered("alpha " + "zulu " * 100).rstrip("\n"),
        ]
        assert not any(v.busy for v in views)
        assert views[0].last_used > views[2].last_used > views[1].last_used
        assert node.stats.cached_tokens == sum(u.cached_tokens for u in node.slot_uses)


def use(cache: PrefixCache, prompt: str, holds: str | None = None) -> tuple[int, int]:
    """Serve one request: (slot index, cached tokens); the slot then holds ``holds``."""
    slot, cached = cache.take(prompt)
    cache.give_back(slot, prompt if holds is None else holds)
    return slot.index, cached


def test_prefix_cache_similarity_threshold_is_exclusive() -> None:
    cache = PrefixCache(2)
    held = "a" * 20 + "b" * 196
    assert use(cache, held) == (0, 0)
    assert use(cache, "c" * 400) == (1, 0)
    assert use(cache, held) == (0, 53)  # slot 0 most recent: slot 1 is the LRU one
    # 4 of 40 tokens shared with slot 0 is 10 %, not above it: the LRU slot.
    assert use(cache, "a" * 16 + "d" * 144, holds="c" * 400) == (1, 0)
    assert use(cache, held) == (0, 53)
    # 5 of 40 tokens is above 10 %: slot 0, although slot 1 is the LRU one.
    assert use(cache, "a" * 20 + "d" * 140) == (0, 5)


def test_prefix_cache_equal_prefixes_take_the_lowest_index() -> None:
    cache = PrefixCache(3)
    shared = "s" * 400
    taken = [cache.take("x" * (i + 1))[0] for i in range(3)]
    for index, text in [(0, "z" * 400), (2, shared), (1, shared)]:
        cache.give_back(taken[index], text)
    assert use(cache, "z" * 400) == (0, 99)  # 0 most recent, then 1, then 2
    slot, cached = cache.take(shared + "tail")
    # llama-server takes the first slot with the best LCP, not the least recently used one.
    assert (slot.index, cached) == (1, 100)
    assert [v.busy for v in cache.view()] == [False, True, False]


# ------------------------------------------------------------------ the prompt cache


async def test_cache_hit_counts_whole_prompt_but_prefills_the_rest(
    session: aiohttp.ClientSession,
) -> None:
    prompt = "x" * 1591  # rendered: 1600 characters, 400 tokens, 0.2 s at 2000/s
    async with SimulatedNode(models=["llama3.2"], prompt_tokens_per_s=2000) as node:
        miss = await generate(session, node, prompt)
        hit = await generate(session, node, prompt)
        # §5.6: prompt_eval_count = cache_n + prompt_n, the duration covers prompt_n only.
        assert miss["prompt_eval_count"] == hit["prompt_eval_count"] == 400
        assert hit["prompt_eval_duration"] < miss["prompt_eval_duration"]
        assert [u.cached_tokens for u in node.slot_uses] == [0, 399]
        assert (node.stats.prompt_tokens, node.stats.cached_tokens) == (800, 399)


# ------------------------------------------------------------------ restart


async def test_restart_with_another_num_parallel(session: aiohttp.ClientSession) -> None:
    async with SimulatedNode(models=["llama3.2"], num_parallel=1, token_delay=TOKEN_DELAY) as node:
        url = node.url
        prompts = ["first " * 40, "second " * 40]

        async def both() -> list[float]:
            replies = await asyncio.gather(
                *(generate(session, node, p, num_predict=8) for p in prompts)
            )
            return sorted(slot_wait(r) for r in replies)

        before = await both()
        assert before[1] >= 0.8 * DECODE
        await generate(session, node, prompts[0])
        assert node.slot_uses[-1].cached_tokens > 0
        await node.restart(num_parallel=2)
        assert (node.url, node.num_parallel) == (url, 2)
        assert node.loaded_models() == [] and node.slots("llama3.2") == ()
        after = await both()
        assert after[1] < DECODE / 2  # two slots now: nobody waits
        assert [u.cached_tokens for u in node.slot_uses[-2:]] == [0, 0]  # the cache is gone
        assert len(node.slots("llama3.2")) == 2 and node.stats.loads == 2


async def test_restart_drops_requests_in_flight(session: aiohttp.ClientSession) -> None:
    async with SimulatedNode(models=["llama3.2"], token_delay=0.05) as node:
        req = {"model": "llama3.2", "prompt": "long", "options": {"num_predict": 100}}

        async def stream() -> bytes:
            async with session.post(node.url + "/api/generate", json=req) as r:
                return await r.read()

        task = asyncio.create_task(stream())
        await eventually(lambda: bool(node.slot_uses))
        await node.restart()
        with pytest.raises(aiohttp.ClientError):
            await task
        assert node.in_flight() == 0 and node.num_parallel == 1
        assert (await generate(session, node, "again"))["done"] is True
