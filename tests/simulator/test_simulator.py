"""Wire-level tests of the simulated Ollama node (sollol_proxy.simulator).

They talk HTTP over real sockets and check the facts the proxy's tests rely on: content
types, exact bodies, framing, scheduler physics and the fault knobs."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import json
import math
import re
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ollama
import pytest

from sollol_proxy.simulator import NodeStats, SimModel, SimulatedNode, default_catalog
from sollol_proxy.simulator.kvcache import PrefixCache, common_prefix_len

JSON_UTF8 = "application/json; charset=utf-8"
CREATED_AT_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
METRICS = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]


@pytest.fixture
async def node() -> AsyncIterator[SimulatedNode]:
    async with SimulatedNode(models=["llama3.2:latest", "all-minilm:latest"]) as n:
        yield n


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s


async def call(
    session: aiohttp.ClientSession,
    node: SimulatedNode,
    method: str,
    path: str,
    body: Any = None,
    **kw: Any,
) -> tuple[int, Any, bytes]:
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    async with session.request(
        method, node.url + path, data=data, allow_redirects=False, **kw
    ) as r:
        return r.status, r.headers, await r.read()


def lines(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.split(b"\n")[:-1]]


# ------------------------------------------------------------------ transport facts


async def test_simple_routes_exact_bytes(node: SimulatedNode, session: aiohttp.ClientSession):
    status, headers, body = await call(session, node, "GET", "/")
    assert (status, headers["Content-Type"], body) == (
        200,
        "text/plain; charset=utf-8",
        b"Ollama is running",
    )
    assert "Server" not in headers and "Content-Encoding" not in headers
    status, headers, body = await call(session, node, "HEAD", "/api/version")
    assert (status, headers["Content-Type"], body) == (200, JSON_UTF8, b"")
    status, headers, body = await call(session, node, "GET", "/api/version")
    assert body == b'{"version":"0.33.0-rc2"}'
    status, headers, body = await call(session, node, "GET", "/api/status")
    assert body == b'{"cloud":{"disabled":false,"source":"none"}}'
    assert headers["Content-Type"] == JSON_UTF8


async def test_404_405_and_redirects(node: SimulatedNode, session: aiohttp.ClientSession):
    status, headers, body = await call(session, node, "GET", "/api/nope")
    assert (status, headers["Content-Type"], body) == (404, "text/plain", b"404 page not found")
    status, headers, body = await call(session, node, "GET", "/api/chat")
    assert (status, headers["Allow"], body) == (405, "POST", b"405 method not allowed")
    assert headers["Content-Type"] == "text/plain"
    assert (await call(session, node, "POST", "/api/tags"))[1]["Allow"] == "HEAD, GET"
    assert (await call(session, node, "GET", "/api/blobs/x"))[1]["Allow"] == "HEAD, POST"
    status, headers, body = await call(session, node, "GET", "/api/tags/")
    assert (status, headers["Location"]) == (301, "/api/tags")
    assert body == b'<a href="/api/tags">Moved Permanently</a>.\n\n'
    status, headers, body = await call(session, node, "POST", "/api/chat/", b"{}")
    assert (status, headers["Location"], body) == (307, "/api/chat", b"")


async def test_host_check(session: aiohttp.ClientSession):
    async with SimulatedNode(models=["llama3.2"]) as node:
        status, headers, body = await call(
            session, node, "GET", "/api/tags", headers={"Host": "example.com"}
        )
        assert (status, body) == (403, b"") and "Content-Type" not in headers
        assert (await call(session, node, "GET", "/nope", headers={"Host": "evil.com"}))[0] == 403
        for host in ("localhost:11434", "10.0.0.7:11434", "gpu1.internal", "box.local", "[::1]:1"):
            assert (await call(session, node, "GET", "/api/tags", headers={"Host": host}))[0] == 200
        status, _, _ = await call(
            session, node, "OPTIONS", "/api/chat", headers={"Host": "localhost"}
        )
        assert status == 204
    async with SimulatedNode(bind_host="0.0.0.0") as open_node:
        assert (await call(session, open_node, "GET", "/", headers={"Host": "x.com"}))[0] == 200


async def test_bad_bodies(node: SimulatedNode, session: aiohttp.ClientSession):
    cases = [
        (b"", "missing request body"),
        (b'{"model":', "unexpected EOF"),
        (b"x", "invalid character 'x' looking for beginning of value"),
        (
            b'{"model":1}',
            "json: cannot unmarshal number into Go struct field ChatRequest.model of type string",
        ),
        (b'{"model":"llama3.2","keep_alive":"300"}', 'time: missing unit in duration "300"'),
    ]
    for raw, message in cases:
        status, headers, body = await call(session, node, "POST", "/api/chat", raw)
        assert (status, headers["Content-Type"]) == (400, JSON_UTF8)
        assert json.loads(body) == {"error": message}
    # Only the first JSON value counts and unknown fields are ignored.
    status, _, body = await call(
        session, node, "POST", "/api/generate", b'{"model":"llama3.2","bogus":1} trailing'
    )
    assert status == 200 and json.loads(body)["done_reason"] == "load"


# ------------------------------------------------------------------ generate / chat


async def test_generate_stream_framing(node: SimulatedNode, session: aiohttp.ClientSession):
    status, headers, body = await call(
        session,
        node,
        "POST",
        "/api/generate",
        {"model": "llama3.2", "prompt": "Why is the sky blue?"},
    )
    assert (status, headers["Content-Type"]) == (200, "application/x-ndjson")
    assert headers["Transfer-Encoding"] == "chunked" and "Server" not in headers
    objs = lines(body)
    assert len(objs) == 13
    for obj in objs[:-1]:
        assert list(obj) == ["model", "created_at", "response", "done"]
        assert obj["model"] == "llama3.2" and obj["done"] is False
        assert CREATED_AT_RE.match(obj["created_at"])
    final = objs[-1]
    assert list(final) == [
        "model",
        "created_at",
        "response",
        "done",
        "done_reason",
        "context",
        *METRICS,
    ]
    assert final["done_reason"] == "stop" and final["eval_count"] == 12
    # The rendered prompt "<|user|>Why is the sky blue?\n" at ceil(chars / 4) tokens.
    assert final["prompt_eval_count"] == math.ceil(len("<|user|>Why is the sky blue?\n") / 4)
    # The recorded bytes are exactly what went over the wire.
    assert node.responses[-1].body == body and node.responses[-1].complete
    assert node.requests[-1].path == "/api/generate"


async def test_generate_non_stream_and_length(node: SimulatedNode, session: aiohttp.ClientSession):
    status, headers, body = await call(
        session,
        node,
        "POST",
        "/api/generate",
        {"model": "llama3.2", "prompt": "hi", "stream": False, "options": {"num_predict": 3}},
    )
    assert (status, headers["Content-Type"]) == (200, JSON_UTF8)
    assert not body.endswith(b"\n")
    obj = json.loads(body)
    assert obj["done_reason"] == "length" and obj["eval_count"] == 3
    assert len(obj["response"].split(" ")) == 3 and len(obj["context"]) > 3


async def test_chat_stream_and_non_stream(node: SimulatedNode, session: aiohttp.ClientSession):
    req = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}]}
    _, headers, body = await call(session, node, "POST", "/api/chat", req)
    objs = lines(body)
    assert headers["Content-Type"] == "application/x-ndjson"
    assert list(objs[0]) == ["model", "created_at", "message", "done"]
    assert objs[0]["message"]["role"] == "assistant"
    assert list(objs[-1]) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert objs[-1]["message"] == {"role": "assistant", "content": ""}
    text = "".join(o["message"]["content"] for o in objs)
    _, headers, body = await call(session, node, "POST", "/api/chat", req | {"stream": False})
    assert headers["Content-Type"] == JSON_UTF8
    assert json.loads(body)["message"]["content"] == text  # deterministic text


async def test_deterministic_identical_bytes(session: aiohttp.ClientSession):
    async with SimulatedNode(models=["llama3.2"], deterministic=True) as node:
        req = {"model": "llama3.2", "prompt": "same"}
        bodies = [(await call(session, node, "POST", "/api/generate", req))[2] for _ in range(2)]
        assert bodies[0] == bodies[1]
        assert b'"created_at":"2026-01-01T00:00:00Z"' in bodies[0]
        # The prefix cache still works; only the reported durations are fixed.
        count = json.loads(bodies[0].split(b"\n")[-2])["prompt_eval_count"]
        assert node.stats.cached_tokens == count - 1 and node.stats.requests == 2


async def test_load_and_unload_replies(session: aiohttp.ClientSession):
    async with SimulatedNode(models=["llama3.2"], deterministic=True) as node:
        _, headers, body = await call(session, node, "POST", "/api/generate", {"model": "llama3.2"})
        assert headers["Content-Type"] == JSON_UTF8
        assert body == (
            b'{"model":"llama3.2","created_at":"2026-01-01T00:00:00Z",'
            b'"response":"","done":true,"done_reason":"load"}'
        )
        assert node.loaded_models() == ["llama3.2:latest"]
        _, _, body = await call(
            session,
            node,
            "POST",
            "/api/chat",
            {"model": "llama3.2", "messages": [], "keep_alive": 0},
        )
        assert body == (
            b'{"model":"llama3.2","created_at":"2026-01-01T00:00:00Z",'
            b'"message":{"role":"assistant","content":""},"done":true,'
            b'"done_reason":"unload"}'
        )
        assert node.loaded_models() == []


async def test_inference_errors(node: SimulatedNode, session: aiohttp.ClientSession):
    cases = [
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
        ("/api/generate", {"model": "", "prompt": "x"}, 404, "model '' not found"),
        ("/api/chat", {"model": "nope:7b", "messages": []}, 404, "model 'nope:7b' not found"),
        ("/api/chat", {"messages": []}, 400, "model is required"),
        (
            "/api/chat",
            {"model": "all-minilm", "messages": [{"role": "user", "content": "x"}]},
            400,
            '"all-minilm" does not support chat',
        ),
        (
            "/api/generate",
            {"model": "llama3.2", "prompt": "x", "options": {"num_ctx": "8k"}},
            500,
            'option "num_ctx" must be of type integer',
        ),
    ]
    for path, req, status_code, message in cases:
        status, headers, body = await call(session, node, "POST", path, req)
        assert (status, headers["Content-Type"]) == (status_code, JSON_UTF8), path
        assert body == json.dumps({"error": message}, separators=(",", ":")).encode()


# ------------------------------------------------------------------ scheduler


async def _first_line_time(
    session: aiohttp.ClientSession, url: str, req: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> tuple[float, float]:
    async with session.post(url, json=req) as r:
        await r.content.readline()
        first = loop.time()
        await r.read()
        return first, loop.time()


async def test_slot_limit_queues_second_request(session: aiohttp.ClientSession):
    async with SimulatedNode(models=["llama3.2"], token_delay=0.02) as node:
        loop = asyncio.get_running_loop()
        req = {"model": "llama3.2", "prompt": "p", "options": {"num_predict": 8}}
        url = node.url + "/api/generate"
        a = asyncio.create_task(_first_line_time(session, url, req, loop))
        await asyncio.sleep(0.03)
        assert node.in_flight() == 1
        b = asyncio.create_task(_first_line_time(session, url, req, loop))
        await asyncio.sleep(0.03)
        assert node.in_flight() == 2
        assert node.slot_demand() == 2  # one holds the slot, one waits for it
        (_, a_end), (b_first, _) = await a, await b
        assert b_first >= a_end - 0.01  # b got its slot only when a finished
        assert node.in_flight() == node.slot_demand() == 0


async def test_disconnect_cancels_and_frees_slot(session: aiohttp.ClientSession):
    async with SimulatedNode(models=["llama3.2"], token_delay=0.05) as node:
        req = {"model": "llama3.2", "prompt": "long", "options": {"num_predict": 200}}
        waiting_req = dict(req)
        r1 = await session.post(node.url + "/api/generate", json=req)
        await r1.content.readline()
        waiter = asyncio.create_task(session.post(node.url + "/api/generate", json=waiting_req))
        await asyncio.sleep(0.05)
        assert node.in_flight() == 2
        waiter.cancel()  # goes away while waiting for the slot
        r1.close()  # goes away mid-generation
        for _ in range(100):
            if node.cancelled == 2 and node.in_flight() == 0:
                break
            await asyncio.sleep(0.01)
        assert (node.cancelled, node.in_flight(), node.slot_demand()) == (2, 0, 0)
        assert not node.responses[-1].complete
        quick = {"model": "llama3.2", "prompt": "x", "options": {"num_predict": 1}}
        status, _, _ = await asyncio.wait_for(
            call(session, node, "POST", "/api/generate", quick), 1
        )
        assert status == 200


async def test_eviction_keep_alive_and_ps(session: aiohttp.ClientSession):
    async with SimulatedNode(
        models=["llama3.2", "qwen2.5:7b", "mistral"], max_loaded_models=2, load_delay=0.01
    ) as node:

        async def load(model: str, **extra: Any) -> dict[str, Any]:
            status, _, body = await call(
                session, node, "POST", "/api/generate", {"model": model} | extra
            )
            assert status == 200, body
            return json.loads(body)

        await load("llama3.2", keep_alive=-1)
        await load("qwen2.5:7b", keep_alive="10m")
        await load("mistral")  # evicts the shortest session first: qwen2.5 (10m < forever)
        assert sorted(node.loaded_models()) == ["llama3.2:latest", "mistral:latest"]
        _, headers, body = await call(session, node, "GET", "/api/ps")
        assert headers["Content-Type"] == JSON_UTF8
        models = json.loads(body)["models"]
        assert [m["name"] for m in models] == ["llama3.2:latest", "mistral:latest"]
        assert list(models[0]) == [
            "name",
            "model",
            "size",
            "digest",
            "details",
            "expires_at",
            "size_vram",
            "context_length",
        ]
        assert int(models[0]["expires_at"][:4]) > 2300  # keep_alive -1: ~292 years
        assert models[1]["context_length"] == 4096
        # A different num_ctx reloads the runner (§5.4).
        await load("mistral", options={"num_ctx": 8192}, keep_alive=0.05)
        ps = json.loads((await call(session, node, "GET", "/api/ps"))[2])["models"]
        assert {m["name"]: m["context_length"] for m in ps}["mistral:latest"] == 8192
        await asyncio.sleep(0.15)  # keep_alive expiry
        assert node.loaded_models() == ["llama3.2:latest"]


async def test_vram_eviction(session: aiohttp.ClientSession):
    small = SimModel("small:1b", size=6 * 2**30)
    big = SimModel("big:1b", size=7 * 2**30)
    async with SimulatedNode(models=[small, big], vram_bytes=10 * 2**30) as node:
        await call(session, node, "POST", "/api/generate", {"model": "small:1b"})
        await call(session, node, "POST", "/api/generate", {"model": "big:1b"})
        assert node.loaded_models() == ["big:1b"]


# ------------------------------------------------------------------ physics for benchmarks


def rendered(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)


async def chat_turn(
    session: aiohttp.ClientSession, node: SimulatedNode, messages: list[dict[str, str]], **kw: Any
) -> tuple[dict[str, Any], int]:
    """One non-streamed chat; returns the reply and the prompt tokens it took from cache."""
    before = node.stats.cached_tokens
    req = {"model": "llama3.2", "messages": messages, "stream": False} | kw
    status, _, body = await call(session, node, "POST", "/api/chat", req)
    assert status == 200, body
    return json.loads(body), node.stats.cached_tokens - before


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_prefix_cache_slot_choice():
    prompt = rendered([user("a" * 400)])
    cache = PrefixCache(2)
    slot, cached = cache.take(prompt)
    assert (slot.index, cached) == (0, 0)
    cache.give_back(slot, prompt + "<|assistant|>Out.\n")
    longer = rendered([user("a" * 400), {"role": "assistant", "content": "Out."}, user("b")])
    slot, cached = cache.take(longer)
    assert (slot.index, cached) == (0, len(prompt + "<|assistant|>Out.\n") // 4)
    cache.give_back(slot, longer)
    # The same prompt again: everything but one token is reused.
    slot, cached = cache.take(longer)
    assert cached == math.ceil(len(longer) / 4) - 1
    cache.give_back(slot, longer)
    # Only "<|user|>" in common (below 10 % of the prompt): least recently used slot.
    slot, cached = cache.take(rendered([user("z" * 400)]))
    assert (slot.index, cached) == (1, 0)
    a, b = "q" * 20_000, "q" * 19_000 + "r"
    assert common_prefix_len(a, b) == 19_000 and common_prefix_len(a, a[:77]) == 77


async def test_prefix_cache_turns_num_parallel_1(session: aiohttp.ClientSession):
    rate = 4000.0
    async with SimulatedNode(models=["llama3.2"], prompt_tokens_per_s=rate) as node:
        conv = [user("conversation A. " + "tell me about llamas " * 40)]  # ~210 tokens
        reply, cached = await chat_turn(session, node, conv)
        count = math.ceil(len(rendered(conv)) / 4)
        assert (cached, reply["prompt_eval_count"]) == (0, count)
        assert reply["prompt_eval_duration"] >= 0.95e9 * count / rate
        history = []
        for turn in range(3):
            conv += [reply["message"], user(f"and then what? ({turn})")]
            reply, cached = await chat_turn(session, node, conv)
            # The slot held the last prompt plus the answer: all of it is reused.
            assert cached == len(rendered(conv[:-1])) // 4
            count = math.ceil(len(rendered(conv)) / 4)
            assert reply["prompt_eval_count"] == count  # the whole prompt, cached included
            # ... but only the uncached part took time (HEAD llama-server semantics).
            assert 0.95e9 * (count - cached) / rate <= reply["prompt_eval_duration"] < 0.02e9
            history.append(cached)
        assert history == sorted(history) and history[0] > 200
        # Another conversation takes the only slot; conversation A's prefix is gone.
        _, cached = await chat_turn(session, node, [user("conversation B " * 30)])
        assert cached == len("<|user|>conversation ") // 4
        conv += [reply["message"], user("still there?")]
        reply, cached = await chat_turn(session, node, conv)
        assert cached == len("<|user|>conversation ") // 4
        assert reply["prompt_eval_duration"] > 0.9e9 * (len(rendered(conv)) / 4 - 6) / rate
        assert (node.stats.requests, node.stats.loads) == (6, 1)


async def test_prefix_cache_num_parallel_2_keeps_two_conversations(
    session: aiohttp.ClientSession,
):
    async with SimulatedNode(models=["llama3.2"], num_parallel=2, token_delay=0.005) as node:
        convs = [[user(f"conversation {c}: " + "why is the sky blue? " * 30)] for c in "AB"]
        for turn in range(3):
            before = node.stats.cached_tokens  # A and B run at once, each in its own slot
            results = await asyncio.gather(*(chat_turn(session, node, conv) for conv in convs))
            expected = sum(len(rendered(conv[:-1])) // 4 for conv in convs) if turn else 0
            assert node.stats.cached_tokens - before == expected
            for conv, (reply, _) in zip(convs, results, strict=True):
                conv += [reply["message"], user(f"more {turn}")]
        for conv in convs:  # one after the other: still one slot each
            reply, cached = await chat_turn(session, node, conv)
            assert cached == len(rendered(conv[:-1])) // 4
        assert node.stats.prompt_tokens == sum(
            math.ceil(len(rendered(conv[:k])) / 4) for conv in convs for k in (1, 3, 5, 7)
        )
        slots = node._sched.loaded()[0].cache.texts()
        assert sorted(t[:24] for t in slots) == [
            "<|user|>conversation A: ",
            "<|user|>conversation B: ",
        ]


async def test_prefix_cache_lost_on_num_ctx_reload(session: aiohttp.ClientSession):
    async with SimulatedNode(models=["llama3.2"]) as node:
        conv = [user("hello there " * 40)]
        reply, _ = await chat_turn(session, node, conv)
        conv += [reply["message"], user("next")]
        _, cached = await chat_turn(session, node, conv, options={"num_ctx": 8192})
        assert cached == 0 and (node.stats.loads, node.stats.evictions) == (2, 0)
        _, cached = await chat_turn(session, node, conv, options={"num_ctx": 8192})
        assert cached == math.ceil(len(rendered(conv)) / 4) - 1


async def test_vram_eviction_order_with_counters(session: aiohttp.ClientSession):
    gib = 2**30
    sizes = {"x:1b": 3 * gib, "y:1b": 4 * gib, "z:1b": 5 * gib, "w:1b": 8 * gib}
    models = [SimModel(name, size=size) for name, size in sizes.items()]
    async with SimulatedNode(models=models, vram_bytes=10 * gib, token_delay=0.01) as node:
        loop = asyncio.get_running_loop()

        async def gen(model: str, n: int = 1) -> dict[str, Any]:
            req = {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": n}}
            status, _, body = await call(session, node, "POST", "/api/generate", req)
            assert status == 200, body
            return json.loads(body)

        await gen("y:1b")
        await gen("x:1b")
        assert (node.stats.loads, node.stats.evictions) == (2, 0)
        await gen("z:1b")  # 12 GiB > 10: same session duration, so by name: x goes
        assert sorted(node.loaded_models()) == ["y:1b", "z:1b"]
        assert node.stats.evictions == 1
        busy_y = asyncio.create_task(gen("y:1b", 50))  # ~0.5 s
        await asyncio.sleep(0.03)
        start = loop.time()
        await gen("x:1b")  # y is busy: the first idle runner in order (z) goes at once
        assert loop.time() - start < 0.15
        assert sorted(node.loaded_models()) == ["x:1b", "y:1b"]
        busy_x = asyncio.create_task(gen("x:1b", 20))  # ~0.2 s
        await asyncio.sleep(0.03)
        wait_before = node.stats.load_wait
        z = await gen("z:1b")  # nobody idle: wait for the first in order (x) to finish
        assert busy_x.done() and not busy_y.done()
        assert z["load_duration"] >= 0.1e9 and node.stats.load_wait - wait_before >= 0.1
        assert sorted(node.loaded_models()) == ["y:1b", "z:1b"]
        await busy_y
        await gen("w:1b")  # 8 GiB: both y and z must go
        assert node.loaded_models() == ["w:1b"]
        assert (node.stats.loads, node.stats.evictions, node.stats.requests) == (6, 5, 8)
        node.stats.reset()
        assert node.stats == NodeStats()


async def test_load_lock_load_time_and_wait_counters(session: aiohttp.ClientSession):
    gib = 2**30
    small, big, other = (
        SimModel(f"{n}:1b", size=s * gib // 2) for n, s in [("s", 1), ("b", 6), ("o", 2)]
    )
    async with SimulatedNode(
        models=[small, big, other], load_bytes_per_s=10 * gib, token_delay=0.02
    ) as node:
        loop = asyncio.get_running_loop()

        async def gen(model: str, n: int = 1) -> dict[str, Any]:
            req = {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": n}}
            status, _, body = await call(session, node, "POST", "/api/generate", req)
            assert status == 200, body
            return json.loads(body)

        assert 0.05e9 <= (await gen("s:1b"))["load_duration"] < 0.1e9  # 0.5 GiB at 10 GiB/s
        assert 0.045 <= node.stats.load_wait < 0.1
        big_load = asyncio.create_task(gen("b:1b"))  # 0.3 s
        await asyncio.sleep(0.02)
        start = loop.time()
        await gen("s:1b")  # loaded: does not wait on the load lock
        assert loop.time() - start < 0.1 and not big_load.done()
        o = await gen("o:1b")  # waits behind the big load (one at a time), then its own
        assert big_load.done() and o["load_duration"] >= 0.35e9
        assert node.stats.load_wait >= 0.05 + 0.3 + 0.35
        assert node.stats.queue_wait < 0.01 and node.stats.loads == 3
        both = [gen("s:1b", 6), gen("s:1b", 6)]  # num_parallel=1: the second waits ~0.1 s
        await asyncio.gather(*both)
        assert node.stats.queue_wait >= 0.09


async def test_speed_multiplier_halves_prefill_and_decode(session: aiohttp.ClientSession):
    req = {
        "model": "llama3.2",
        "prompt": "x" * 1591,  # rendered: 1600 characters, 400 tokens, 0.1 s at 4000/s
        "stream": False,
        "options": {"num_predict": 11},  # 10 token delays: 0.1 s
    }
    reported = {}
    for speed in (1.0, 2.0):
        async with SimulatedNode(
            models=["llama3.2"], prompt_tokens_per_s=4000, token_delay=0.01, speed=speed
        ) as node:
            reported[speed] = json.loads(
                (await call(session, node, "POST", "/api/generate", req))[2]
            )
    slow, fast = reported[1.0], reported[2.0]
    assert slow["prompt_eval_count"] == fast["prompt_eval_count"] == 400
    for field in ("prompt_eval_duration", "eval_duration"):
        assert slow[field] >= 0.095e9 and fast[field] >= 0.0475e9
        assert 1.5 <= slow[field] / fast[field] <= 2.5, (field, slow[field], fast[field])
    with pytest.raises(ValueError):
        SimulatedNode(speed=0)


# ------------------------------------------------------------------ embeddings


async def test_embed_routes(node: SimulatedNode, session: aiohttp.ClientSession):
    _, headers, body = await call(
        session, node, "POST", "/api/embed", {"model": "all-minilm", "input": ["a", "b"]}
    )
    obj = json.loads(body)
    assert headers["Content-Type"] == JSON_UTF8
    assert list(obj) == [
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    ]
    assert len(obj["embeddings"]) == 2
    assert math.isclose(math.sqrt(sum(v * v for v in obj["embeddings"][0])), 1, rel_tol=1e-5)
    _, _, body = await call(
        session, node, "POST", "/api/embed", {"model": "all-minilm", "input": ""}
    )
    assert body == b'{"model":"all-minilm","embeddings":[]}'
    status, _, body = await call(session, node, "POST", "/api/embed", {"model": "x", "input": "a"})
    assert (status, body) == (404, b'{"error":"model \\"x\\" not found, try pulling it first"}')
    _, _, body = await call(
        session, node, "POST", "/api/embeddings", {"model": "all-minilm", "prompt": "a"}
    )
    assert list(json.loads(body)) == ["embedding"]


# ------------------------------------------------------------------ model management


async def test_show(node: SimulatedNode, session: aiohttp.ClientSession):
    _, headers, body = await call(session, node, "POST", "/api/show", {"model": "llama3.2"})
    obj = json.loads(body)
    assert headers["Content-Type"] == JSON_UTF8
    assert obj["model_info"]["general.architecture"] == "llama"
    assert list(obj)[-1] == "modified_at" and "details" in obj
    status, _, body = await call(session, node, "POST", "/api/show", {"model": "foo"})
    assert (status, body) == (404, b'{"error":"model \'foo:latest\' not found"}')
    status, _, body = await call(session, node, "POST", "/api/show", {})
    assert (status, body) == (400, b'{"error":"model is required"}')


async def test_tags_pull_copy_delete(session: aiohttp.ClientSession):
    async with SimulatedNode() as node:
        _, headers, body = await call(session, node, "GET", "/api/tags")
        assert (headers["Content-Type"], body) == (JSON_UTF8, b'{"models":[]}')
        _, headers, body = await call(session, node, "POST", "/api/pull", {"name": "qwen2.5:7b"})
        statuses = [o["status"] for o in lines(body)]
        assert headers["Content-Type"] == "application/x-ndjson"
        assert statuses[0] == "pulling manifest" and statuses[-3:] == [
            "verifying sha256 digest",
            "writing manifest",
            "success",
        ]
        layer = lines(body)[1]
        assert list(layer) == ["status", "digest", "total", "completed"]
        assert layer["status"] == "pulling " + layer["digest"][7:19]
        status, headers, body = await call(
            session, node, "POST", "/api/pull", {"model": "llama3.2", "stream": False}
        )
        assert (status, headers["Content-Type"], body) == (
            200,
            "application/json",
            b'{"status":"success"}',
        )
        tags = json.loads((await call(session, node, "GET", "/api/tags"))[2])["models"]
        assert [m["name"] for m in tags] == ["llama3.2:latest", "qwen2.5:7b"]  # newest first
        _, _, body = await call(session, node, "POST", "/api/pull", {"model": "nope"})
        assert body == (
            b'{"status":"pulling manifest"}\n{"error":"pull model manifest: file does not exist"}\n'
        )
        status, headers, body = await call(
            session, node, "POST", "/api/pull", {"model": "nope", "stream": False}
        )
        assert (status, headers["Content-Type"]) == (500, "application/json")
        status, headers, body = await call(
            session, node, "POST", "/api/copy", {"source": "llama3.2", "destination": "backup"}
        )
        assert (status, body) == (200, b"") and "Content-Type" not in headers
        assert node.has_model("backup:latest")
        status, _, body = await call(
            session, node, "POST", "/api/copy", {"source": "missing", "destination": "x"}
        )
        assert (status, body) == (404, b'{"error":"model \\"missing\\" not found"}')
        status, headers, body = await call(
            session, node, "DELETE", "/api/delete", {"model": "backup"}
        )
        assert (status, body) == (200, b"") and "Content-Type" not in headers
        status, _, body = await call(session, node, "DELETE", "/api/delete", {"name": "backup"})
        assert (status, body) == (404, b'{"error":"model \'backup\' not found"}')
        _, _, body = await call(session, node, "POST", "/api/push", {"model": "qwen2.5:7b"})
        statuses = [o["status"] for o in lines(body)]
        assert statuses[0] == "retrieving manifest" and statuses[-2:] == [
            "pushing manifest",
            "success",
        ]
        status, _, body = await call(session, node, "POST", "/api/push", {})
        assert (status, body) == (400, b'{"error":"model is required"}')


async def test_blobs_and_create(node: SimulatedNode, session: aiohttp.ClientSession):
    data = b"GGUF" + bytes(100_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, _, _ = await call(session, node, "HEAD", "/api/blobs/" + digest)
    assert status == 404
    status, _, body = await call(session, node, "HEAD", "/api/blobs/sha256:zz")
    assert status == 400
    status, _, body = await call(session, node, "POST", "/api/blobs/sha256:zz", b"x")
    assert (status, body) == (400, b'{"error":"invalid digest format"}')
    wrong = "sha256:" + "0" * 64
    status, _, body = await call(session, node, "POST", "/api/blobs/" + wrong, data)
    assert status == 400 and json.loads(body)["error"] == (
        f'digest mismatch, expected "{wrong}", got "{digest}"'
    )
    status, headers, body = await call(session, node, "POST", "/api/blobs/" + digest, data)
    assert (status, body) == (201, b"") and "Content-Type" not in headers
    assert (await call(session, node, "POST", "/api/blobs/" + digest, data))[0] == 200
    assert (await call(session, node, "HEAD", "/api/blobs/" + digest))[0] == 200
    assert node.requests[-2].body == b""  # blob bytes are not kept

    _, headers, body = await call(
        session, node, "POST", "/api/create", {"model": "mine", "files": {"m.gguf": digest}}
    )
    assert headers["Content-Type"] == "application/x-ndjson"
    assert [o["status"] for o in lines(body)][-2:] == ["writing manifest", "success"]
    assert node.has_model("mine")
    status, headers, body = await call(
        session,
        node,
        "POST",
        "/api/create",
        {"model": "derived", "from": "llama3.2", "system": "be brief", "stream": False},
    )
    assert (status, headers["Content-Type"], body) == (
        200,
        "application/json",
        b'{"status":"success"}',
    )
    status, headers, body = await call(
        session,
        node,
        "POST",
        "/api/create",
        {"model": "bad", "files": {"m.gguf": wrong}, "stream": False},
    )
    assert (status, headers["Content-Type"]) == (400, "application/json")
    assert not node.has_model("bad")


# ------------------------------------------------------------------ fault knobs


async def test_fault_refuse_and_reset_before_headers(
    node: SimulatedNode, session: aiohttp.ClientSession
):
    node.faults.refuse = True
    with pytest.raises(aiohttp.ClientError):
        await call(session, node, "GET", "/api/version")
    node.faults.refuse = False
    node.faults.reset_before_headers = True
    with pytest.raises(aiohttp.ClientError):
        await call(session, node, "POST", "/api/chat", {"model": "llama3.2", "messages": []})
    assert node.requests[-1].path == "/api/chat"
    assert node.responses[-1].status == 0 and not node.responses[-1].complete
    node.faults.reset_before_headers = False
    assert (await call(session, node, "GET", "/api/version"))[0] == 200


async def test_fault_reset_after_chunks(node: SimulatedNode, session: aiohttp.ClientSession):
    node.faults.reset_after_chunks = 3
    async with session.post(
        node.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"}
    ) as r:
        got = [await r.content.readline() for _ in range(3)]
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert all(line.endswith(b"\n") for line in got)
    assert node.responses[-1].body == b"".join(got) and not node.responses[-1].complete
    assert node.cancelled == 0 and node.in_flight() == 0


async def test_fault_status_and_delay(node: SimulatedNode, session: aiohttp.ClientSession):
    busy = "server busy, please try again.  maximum pending requests exceeded"
    node.faults.status_error = (503, busy)
    status, headers, body = await call(
        session,
        node,
        "POST",
        "/api/chat",
        {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]},
    )
    assert (status, headers["Content-Type"]) == (503, JSON_UTF8)
    assert json.loads(body) == {"error": busy}
    status, headers, body = await call(
        session,
        node,
        "POST",
        "/v1/chat/completions",
        {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]},
    )
    assert (status, headers["Content-Type"]) == (503, "application/json")
    assert json.loads(body)["error"]["type"] == "api_error" and body.endswith(b"\n")
    node.faults.status_error = None
    node.faults.first_byte_delay = 0.15
    loop = asyncio.get_running_loop()
    start = loop.time()
    await call(session, node, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x"})
    assert loop.time() - start >= 0.15


async def test_fault_mid_stream_error(node: SimulatedNode, session: aiohttp.ClientSession):
    node.faults.mid_stream_error = (2, "an error was encountered while running the model")
    status, _, body = await call(
        session, node, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x"}
    )
    objs = lines(body)
    assert status == 200 and len(objs) == 3
    assert objs[-1] == {"error": "an error was encountered while running the model"}
    node.faults.mid_stream_error = (0, "boom")
    status, headers, body = await call(
        session,
        node,
        "POST",
        "/api/chat",
        {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]},
    )
    assert (status, headers["Content-Type"], body) == (500, "application/json", b'{"error":"boom"}')


async def test_fault_mid_stream_error_v1_completions(
    node: SimulatedNode, session: aiohttp.ClientSession
):
    # §4.2 (derived): CompletionWriter decodes the error line as an empty GenerateResponse and
    # ToCompleteChunk copies its empty Model, as ChatWriter does on /v1/chat/completions.
    node.faults.mid_stream_error = (2, "boom")
    for path, body in (
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
    ):
        status, _, raw = await call(
            session, node, "POST", path, {"model": "llama3.2", "stream": True, **body}
        )
        events = raw.split(b"\n\n")
        assert status == 200 and events[-1] == b"" and b"[DONE]" not in raw
        chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
        assert [c["model"] for c in chunks] == ["llama3.2", "llama3.2", ""], path


# ------------------------------------------------------------------ /v1


async def test_v1_chat_completions(node: SimulatedNode, session: aiohttp.ClientSession):
    req = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    _, headers, body = await call(session, node, "POST", "/v1/chat/completions", req)
    assert headers["Content-Type"] == "application/json" and body.endswith(b"}\n")
    obj = json.loads(body)
    assert list(obj) == [
        "id",
        "object",
        "created",
        "model",
        "system_fingerprint",
        "choices",
        "usage",
    ]
    assert obj["choices"][0]["finish_reason"] == "stop"
    _, headers, body = await call(
        session,
        node,
        "POST",
        "/v1/chat/completions",
        req | {"stream": True, "stream_options": {"include_usage": True}},
    )
    assert headers["Content-Type"] == "text/event-stream"
    events = body.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = [json.loads(e[6:]) for e in events[:-2]]
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": chunks[0]["choices"][0]["delta"]["content"],
    }
    assert "role" not in chunks[1]["choices"][0]["delta"]
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == obj["choices"][0]["message"]["content"]


async def test_v1_errors_and_other_routes(node: SimulatedNode, session: aiohttp.ClientSession):
    status, headers, body = await call(
        session,
        node,
        "POST",
        "/v1/chat/completions",
        {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
    )
    assert (status, headers["Content-Type"]) == (404, "application/json")
    assert body == (
        b'{"error":{"message":"model \'nope\' not found","type":"not_found_error",'
        b'"param":null,"code":null}}\n'
    )
    status, headers, body = await call(
        session, node, "POST", "/v1/chat/completions", {"model": "llama3.2", "messages": []}
    )
    assert (status, headers["Content-Type"]) == (400, JSON_UTF8)
    assert json.loads(body)["error"]["message"] == "[] is too short - 'messages'"
    _, headers, body = await call(
        session,
        node,
        "POST",
        "/v1/completions",
        {"model": "llama3.2", "prompt": "x", "stream": True},
    )
    events = body.split(b"\n\n")
    assert list(json.loads(events[0][6:])) == [
        "id",
        "object",
        "created",
        "choices",
        "model",
        "system_fingerprint",
    ]
    assert events[-2] == b"data: [DONE]"
    _, _, body = await call(
        session, node, "POST", "/v1/embeddings", {"model": "all-minilm", "input": "x"}
    )
    assert list(json.loads(body)) == ["object", "data", "model", "usage"]
    _, headers, body = await call(session, node, "GET", "/v1/models")
    assert json.loads(body)["data"][0]["owned_by"] == "library"
    _, _, body = await call(session, node, "GET", "/v1/models/llama3.2")
    assert json.loads(body)["id"] == "llama3.2"
    async with SimulatedNode() as empty:
        _, _, body = await call(session, empty, "GET", "/v1/models")
        assert body == b'{"object":"list","data":null}\n'


# ------------------------------------------------------------------ official client


async def test_ollama_python_client(session: aiohttp.ClientSession):
    async with SimulatedNode(models=["llama3.2", "all-minilm"]) as node:
        client = ollama.AsyncClient(host=node.url)
        resp = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        assert resp.message.content and resp.done_reason == "stop"
        parts = [
            p
            async for p in await client.chat(
                model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        ]
        assert parts[-1].done and "".join(p.message.content for p in parts) == resp.message.content
        gen = await client.generate(model="llama3.2", prompt="hi")
        assert gen.response and gen.context
        assert [p async for p in await client.generate(model="llama3.2", prompt="hi", stream=True)][
            -1
        ].done
        emb = await client.embed(model="all-minilm", input=["a", "b"])
        assert len(emb.embeddings) == 2
        assert {m.model for m in (await client.list()).models} == {
            "llama3.2:latest",
            "all-minilm:latest",
        }
        assert (await client.show("llama3.2")).modelinfo
        assert (await client.ps()).models
        assert (await client.pull("qwen2.5:7b")).status == "success"
        assert [p.status async for p in await client.pull("mistral", stream=True)][-1] == "success"
        assert (await client.copy("llama3.2", "copy1")).status == "success"
        assert (await client.delete("copy1")).status == "success"
        with pytest.raises(ollama.ResponseError) as err:
            await client.chat(model="missing", messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 404 and err.value.error == "model 'missing' not found"
        with pytest.raises(ollama.ResponseError):
            await client.pull("does-not-exist")


def test_catalog_and_model_defaults():
    cat = default_catalog()
    assert {
        "llama3.2:latest",
        "qwen2.5:7b",
        "mistral:latest",
        "all-minilm:latest",
        "nomic-embed-text:latest",
    } <= set(cat)
    assert cat["all-minilm:latest"].embedding_only
    m = SimModel("foo")
    assert m.name == "foo:latest" and re.fullmatch(r"[0-9a-f]{64}", m.digest)
    assert SimModel("foo").digest == m.digest


# ------------------------------------------------------------------ framing and encodings


async def raw_exchange(node: SimulatedNode, request: bytes) -> bytes:
    """One request over a bare socket (Connection: close), everything the node sent back."""
    reader, writer = await asyncio.open_connection(node.host, node.port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def leftover_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def test_request_content_encoding_is_not_decoded(
    node: SimulatedNode, session: aiohttp.ClientSession
):
    # gin never decodes a request's Content-Encoding: the compressed bytes are bad JSON.
    gz = gzip.compress(b'{"model":"llama3.2"}')
    status, headers, body = await call(
        session, node, "POST", "/api/show", gz, headers={"Content-Encoding": "gzip"}
    )
    assert (status, headers["Content-Type"]) == (400, JSON_UTF8)
    assert body == b'{"error":"invalid character \'\\\\x1f\' looking for beginning of value"}'
    assert node.requests[-1].body == gz
    deflated = zlib.compress(b'{"model":"llama3.2","messages":[]}')
    status, _, body = await call(
        session, node, "POST", "/api/chat", deflated, headers={"Content-Encoding": "deflate"}
    )
    assert (status, body) == (
        400,
        b'{"error":"invalid character \'x\' looking for beginning of value"}',
    )
    # encoding/json quoteChar: the offending byte, as strconv.Quote prints it.
    for raw, shown in [
        (b"\xc3\xa9", "'\u00c3'"),
        (b"\x8b", "'\\u008b'"),
        (b"\\", "'\\\\'"),
        (b"\t\x00", "'\\x00'"),
        (b'{"a" 1}', "'1' after object key"),
    ]:
        status, _, body = await call(session, node, "POST", "/api/show", raw)
        message = json.loads(body)["error"]
        assert status == 400 and message.startswith(f"invalid character {shown}"), message


async def test_bodies_over_2048_bytes_go_out_chunked(
    node: SimulatedNode, session: aiohttp.ClientSession
):
    # net/http buffers 2048 bytes: a body that fits is sent with Content-Length, a larger
    # one with Transfer-Encoding: chunked. /api/tags grows by one byte per character of
    # quantization_level, so its size can be set exactly.
    model = SimModel("sized:latest", quantization_level="Q")
    node.add_model(model)
    _, headers, body = await call(session, node, "GET", "/api/tags")
    assert headers["Content-Length"] == str(len(body)) and len(body) < 2048
    for size in (2048, 2049):
        node.add_model(dataclasses.replace(model, quantization_level="Q" * (size - len(body) + 1)))
        _, headers, got = await call(session, node, "GET", "/api/tags")
        assert len(got) == size and node.responses[-1].body == got
        if size == 2048:
            assert headers["Content-Length"] == "2048" and "Transfer-Encoding" not in headers
        else:
            assert headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in headers
    # One chunk holding the whole body, as gin's single Write produces it.
    req = b'{"model":"all-minilm","input":"hello","dimensions":384}'
    wire = await raw_exchange(
        node,
        b"POST /api/embed HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        + f"Content-Length: {len(req)}\r\n\r\n".encode()
        + req,
    )
    head, _, framed = wire.partition(b"\r\n\r\n")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head and b"Content-Length" not in head
    body = node.responses[-1].body
    assert len(body) > 2048 and len(json.loads(body)["embeddings"][0]) == 384
    assert framed == f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    # Errors, /v1 bodies and HEAD follow the same rule; HEAD never carries a body.
    status, headers, body = await call(
        session, node, "POST", "/v1/embeddings", {"model": "all-minilm", "input": ["a"] * 16}
    )
    assert status == 200 and len(body) > 2048 and headers["Transfer-Encoding"] == "chunked"
    status, headers, body = await call(session, node, "HEAD", "/")
    assert (status, body, headers["Content-Length"]) == (200, b"", "17")
    assert "Transfer-Encoding" not in headers


async def test_fault_stall_after_chunks(session: aiohttp.ClientSession):
    node = SimulatedNode(models=["llama3.2:latest"], num_parallel=2)
    await node.start()
    node.faults.stall_after_chunks = 2
    req = {"model": "llama3.2", "prompt": "x"}
    async with session.post(node.url + "/api/generate", json=req) as r:
        got = [await r.content.readline() for _ in range(2)]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(r.content.readline(), 0.2)
        assert node.in_flight() == 1  # the silent stream still holds its slot
    # The client went away: the handler is cancelled and the slot freed.
    for _ in range(100):
        if node.in_flight() == 0:
            break
        await asyncio.sleep(0.01)
    assert node.in_flight() == 0 and node.cancelled == 1
    assert node.responses[-1].body == b"".join(got) and not node.responses[-1].complete
    # With 0 chunks not even the headers go out (SSE the same).
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": True}
    node.faults.stall_after_chunks = 0
    pending = asyncio.ensure_future(session.post(node.url + "/v1/chat/completions", json=chat))
    await asyncio.sleep(0.2)
    assert not pending.done() and node.in_flight() == 1
    # A stalled stream gets its connection dropped at stop(), at once.
    node.faults.stall_after_chunks = 1
    async with session.post(node.url + "/api/chat", json=chat | {"stream": True}) as r:
        assert json.loads(await r.content.readline())["done"] is False
        loop = asyncio.get_running_loop()
        start = loop.time()
        await node.stop()
        assert loop.time() - start < 0.3
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    with pytest.raises(aiohttp.ClientError):
        await pending
    assert node.in_flight() == 0 and not leftover_tasks()


async def test_fault_truncate_body(session: aiohttp.ClientSession):
    node = SimulatedNode(models=["llama3.2:latest", "all-minilm:latest"])
    await node.start()
    show = {"model": "llama3.2"}
    _, _, full = await call(session, node, "POST", "/api/show", show)
    node.faults.truncate_body = 10
    async with session.post(node.url + "/api/show", json=show) as r:
        assert r.status == 200 and r.headers["Content-Length"] == str(len(full))
        assert await r.content.readexactly(10) == full[:10]
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert node.responses[-1].body == full[:10] and not node.responses[-1].complete
    # Sized even above 2048 bytes; errors are JSON responses too.
    embed = {"model": "all-minilm", "input": "hi", "dimensions": 384}
    async with session.post(node.url + "/api/embed", json=embed) as r:
        assert int(r.headers["Content-Length"]) > 2048 and "Transfer-Encoding" not in r.headers
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    missing = b'{"error":"model \'nope:latest\' not found"}'
    async with session.post(node.url + "/api/show", json={"model": "nope"}) as r:
        assert r.status == 404 and r.headers["Content-Length"] == str(len(missing))
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    # Streams, non-JSON bodies and bodies of at most N bytes are untouched.
    status, _, body = await call(
        session, node, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x"}
    )
    assert status == 200 and lines(body)[-1]["done"] is True
    assert (await call(session, node, "GET", "/"))[2] == b"Ollama is running"
    node.faults.truncate_body = 0
    async with session.post(node.url + "/api/show", json=show) as r:
        assert r.headers["Content-Length"] == str(len(full))
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert node.responses[-1].body == b""
    node.faults.truncate_body = 10_000
    assert (await call(session, node, "POST", "/api/show", show))[2] == full
    await node.stop()
    assert node.in_flight() == 0 and not leftover_tasks()
