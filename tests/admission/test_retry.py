"""A retry's wait for a slot on another node (admission/retry.py), over real sockets."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson
import pytest

from sollol_proxy.app import apply_config
from sollol_proxy.config import load_config
from tests.admission.test_admission import TOKEN_DELAY, admission, call, generate, prompts_seen
from tests.conftest import TEST_SETTINGS, Cluster, ClusterFactory, eventually

Answer = tuple[int, bytes, aiohttp.typedefs.LooseHeaders]


async def two_nodes(cluster: ClusterFactory, **settings: object) -> Cluster:
    """Nodes a and b, both with llama3.2."""
    return await cluster(
        dict(name="a", models=["llama3.2"], token_delay=TOKEN_DELAY),
        dict(name="b", models=["llama3.2"], token_delay=TOKEN_DELAY),
        **settings,
    )


async def retry_waiting_for_b(
    http: aiohttp.ClientSession, made: Cluster, tokens: int, priority: int | None = None
) -> tuple[asyncio.Task[Answer], asyncio.Task[Answer]]:
    """A long request pinned to b, then one whose try on a fails (500) and that waits for b:
    the two tasks, once the retry waits."""
    on_b = asyncio.create_task(
        call(http, made, generate("llama3.2", "on b", tokens), headers={"X-Sollol-Node": "b"})
    )
    await eventually(lambda: admission(made).slots.in_use("b") == {"llama3.2:latest": 1})
    made.node("a").faults.status_error = (500, "llama runner process has terminated")
    retried = asyncio.create_task(call(http, made, generate("llama3.2", "retried"), priority))
    await eventually(lambda: admission(made).waiting == 1)  # after a's 500, waiting for b
    return on_b, retried


async def test_a_retry_waits_for_a_slot_on_another_node_instead_of_failing(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await two_nodes(cluster)
    busy, retried = await retry_waiting_for_b(http, made, 40)
    status, body, headers = await retried
    assert status == 200, body
    assert headers["X-Sollol-Node"] == "b"
    assert headers["X-Sollol-Route"] == "next node with a free slot (after a: answered 500)"
    assert prompts_seen(made.node("b")) == ["on b", "retried"]  # after it, not beside it
    assert made.node("b").stats.queue_wait < 0.05
    await busy
    assert admission(made).snapshot()["slots_in_use"] == {}


async def test_a_retry_waiting_elsewhere_is_neither_counted_in_the_queue_nor_shed(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # A retry was admitted already: not counted in max_length, never shed (was: both).
    made = await two_nodes(cluster, queue__max_length=1)
    on_b, retried = await retry_waiting_for_b(http, made, 150, 2)
    made.node("a").faults.status_error = None
    on_a = asyncio.create_task(
        call(http, made, generate("llama3.2", "on a", 150), headers={"X-Sollol-Node": "a"})
    )
    await eventually(lambda: admission(made).slots.in_use("a") == {"llama3.2:latest": 1})
    urgent = asyncio.create_task(call(http, made, generate("llama3.2", "urgent"), 9))
    await eventually(lambda: admission(made).waiting == 2)  # queued beside the retry
    status, body, _ = await call(http, made, generate("llama3.2", "over"), 9)
    assert status == 503  # the one place in the queue is the urgent request's
    assert "the queue is full (1 requests waiting)" in orjson.loads(body)["error"]
    results = await asyncio.gather(retried, urgent, on_a, on_b)
    assert [r[0] for r in results] == [200, 200, 200, 200], results[0][1]
    assert results[0][2]["X-Sollol-Node"] == "b"
    assert sum(s["shed"] for s in admission(made).snapshot()["by_priority"].values()) == 0


@pytest.mark.parametrize("gone", ["down", "removed"])
async def test_a_retry_stops_waiting_when_the_nodes_it_waits_for_are_gone(
    cluster: ClusterFactory, http: aiohttp.ClientSession, gone: str
) -> None:
    # A retry waiting for b gives up when b is gone (was: it waited out queue.max_wait).
    made = await two_nodes(cluster, queue__max_wait=60)
    on_b, retried = await retry_waiting_for_b(http, made, 1000)
    if gone == "down":
        made.node("b").faults.refuse = True
    else:
        overrides = {**TEST_SETTINGS, "nodes": [{"url": made.node("a").url, "name": "a"}]}
        apply_config(made.proxy.runner.app, load_config(None, env={}, overrides=overrides))
    status, body, _ = await asyncio.wait_for(retried, 15)
    assert status == 502
    assert orjson.loads(body)["error"] == "no Ollama node could answer (a: answered 500)"
    assert admission(made).waiting == 0
    on_b.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await on_b
