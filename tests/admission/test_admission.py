"""Admission control over real sockets: slots per node and model, the priority queue, its bounds."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import ollama
import orjson
import pytest

from sollol_proxy.admission.admission import Admission
from sollol_proxy.admission.tickets import QueueRejected
from sollol_proxy.app import ADMISSION, apply_config
from sollol_proxy.config import ConfigError, NodeConfig, QueueBand, QueueConfig, load_config
from sollol_proxy.fleet.health import Failure, State
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.plan import Plan, Target
from sollol_proxy.routing import Reason
from sollol_proxy.simulator import SimModel
from tests.conftest import TEST_SETTINGS, Cluster, ClusterFactory, eventually

# Each generated token takes this long on the simulated nodes: a request holds its slot for
# num_predict * TOKEN_DELAY seconds.
TOKEN_DELAY = 0.02


def admission(made: Cluster) -> Admission:
    return made.proxy.runner.app[ADMISSION]


def generate(model: str, prompt: str, tokens: int = 5, **extra: Any) -> bytes:
    return orjson.dumps(
        {"model": model, "prompt": prompt, "options": {"num_predict": tokens}, **extra}
    )


async def call(
    http: aiohttp.ClientSession,
    made: Cluster,
    body: bytes,
    priority: int | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    sent = dict(headers or {})
    if priority is not None:
        sent["X-Sollol-Priority"] = str(priority)
    async with http.post(made.url + "/api/generate", data=body, headers=sent) as response:
        return response.status, await response.read(), response.headers


def prompts_seen(node: Any) -> list[str]:
    return [orjson.loads(r.body)["prompt"] for r in node.requests if r.path == "/api/generate"]


async def occupy(http: aiohttp.ClientSession, made: Cluster, tokens: int) -> asyncio.Task[Any]:
    """A request that holds the only slot for about tokens * TOKEN_DELAY seconds."""
    task = asyncio.create_task(call(http, made, generate("llama3.2", "occupier", tokens)))
    await eventually(lambda: sum(admission(made).slots.in_use("a").values()) == 1)
    return task


async def one_slot(cluster: ClusterFactory, **settings: Any) -> Cluster:
    return await cluster(
        dict(name="a", models=["llama3.2", "qwen2.5:7b"], token_delay=TOKEN_DELAY), **settings
    )


async def test_waiting_requests_leave_the_queue_by_priority(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await one_slot(cluster)
    busy = await occupy(http, made, tokens=40)
    waiting = []
    for index, priority in enumerate([2, 9, 5, 10, 1]):
        body = generate("llama3.2", f"p{priority}")
        waiting.append(asyncio.create_task(call(http, made, body, priority)))
        await eventually(lambda n=index + 1: admission(made).snapshot()["depth"] == n)
    snapshot = admission(made).snapshot()
    assert [w["priority"] for w in snapshot["waiting"]] == [10, 9, 5, 2, 1]
    results = await asyncio.gather(busy, *waiting)
    assert all(status == 200 for status, _, _ in results)
    assert prompts_seen(made.node("a")) == ["occupier", "p10", "p9", "p5", "p2", "p1"]
    # Each answer says how long it queued; the node itself never had to queue anything.
    queued_ms = [int(headers["X-Sollol-Queue-Ms"]) for _, _, headers in results[1:]]
    assert all(ms > 0 for ms in queued_ms)
    assert made.node("a").stats.queue_wait < 0.05  # vs about 0.1 s per request queued there
    stats = admission(made).snapshot()["by_priority"]
    assert stats["1"]["queued"] == 1 and stats["1"]["wait_p95_s"] > 0


@pytest.mark.parametrize(
    ("ageing", "low_served"),
    [
        # One priority level per 0.1 s of waiting: after 1 s a priority-1 request counts as 11
        # and goes before fresh priority-9 ones.
        (0.1, 1),
        # The control: with slow ageing the urgent requests go first.
        (3600, -1),
    ],
    ids=["ageing", "no_ageing"],
)
async def test_ageing_lets_a_low_priority_request_overtake_fresh_urgent_ones(
    cluster: ClusterFactory, http: aiohttp.ClientSession, ageing: float, low_served: int
) -> None:
    made = await one_slot(cluster, queue__ageing=ageing, queue__affinity_window=0)
    busy = await occupy(http, made, tokens=80)
    low = asyncio.create_task(call(http, made, generate("llama3.2", "low"), 1))
    await eventually(lambda: admission(made).snapshot()["depth"] == 1)
    await asyncio.sleep(1.0)
    high = [
        asyncio.create_task(call(http, made, generate("llama3.2", f"high{i}"), 9)) for i in range(3)
    ]
    await eventually(lambda: admission(made).snapshot()["depth"] == 4)
    await asyncio.gather(busy, low, *high)
    assert prompts_seen(made.node("a"))[low_served] == "low"


async def test_slot_limits_hold_per_node_and_model_under_concurrency(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2"], num_parallel=2, token_delay=TOKEN_DELAY),
        dict(name="b", models=["llama3.2"], num_parallel=2, token_delay=TOKEN_DELAY),
    )
    peak = {"a": 0, "b": 0}
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            for node in made.nodes:
                peak[node.name] = max(peak[node.name], node.in_flight())
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(
        *(call(http, made, generate("llama3.2", f"r{i}", 8), i % 10 + 1) for i in range(24))
    )
    done.set()
    await watcher
    assert [status for status, _, _ in results] == [200] * 24
    assert peak == {"a": 2, "b": 2}  # both nodes used, never beyond their slots
    assert all(node.stats.queue_wait < 0.05 for node in made.nodes)
    assert all(node.in_flight == 0 for node in made.fleet.nodes.values())
    assert admission(made).snapshot()["slots_in_use"] == {}


async def test_without_the_queue_requests_pile_onto_ollamas_fifo(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await one_slot(cluster, queue__enabled=False)
    results = await asyncio.gather(
        *(call(http, made, generate("llama3.2", f"r{i}", 5)) for i in range(4))
    )
    assert all(status == 200 for status, _, _ in results)
    assert made.node("a").stats.queue_wait > 0  # they waited on the node's semaphore instead


async def test_a_full_queue_answers_503_and_sheds_the_least_urgent_for_a_more_urgent_request(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await one_slot(cluster, queue__max_length=2)
    busy = await occupy(http, made, tokens=40)
    first = asyncio.create_task(call(http, made, generate("llama3.2", "w1"), 3))
    second = asyncio.create_task(call(http, made, generate("llama3.2", "w2"), 5))
    await eventually(lambda: admission(made).snapshot()["depth"] == 2)

    status, body, headers = await call(http, made, generate("llama3.2", "same"), 3)
    assert status == 503
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["Retry-After"] == "5"
    message = orjson.loads(body)["error"]
    assert message.startswith("sollol-proxy: the queue is full (2 requests waiting)")

    urgent = asyncio.create_task(call(http, made, generate("llama3.2", "urgent"), 9))
    status, body, _ = await first  # priority 3, the least urgent, made room
    assert status == 503
    assert "shed from the full queue" in orjson.loads(body)["error"]
    results = await asyncio.gather(busy, second, urgent)
    assert [status for status, _, _ in results] == [200, 200, 200]
    assert prompts_seen(made.node("a")) == ["occupier", "urgent", "w2"]
    stats = admission(made).snapshot()["by_priority"]
    assert (stats["3"]["rejected"], stats["3"]["shed"]) == (1, 1)


async def test_max_wait_per_priority_band(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await one_slot(
        cluster,
        queue__max_wait="20s",
        queue__bands=[{"priorities": "1-3", "max_wait": "300ms", "max_length": 5}],
    )
    busy = await occupy(http, made, tokens=60)
    urgent = asyncio.create_task(call(http, made, generate("llama3.2", "urgent"), 8))
    status, body, headers = await call(http, made, generate("llama3.2", "batch"), 1)
    assert status == 503
    assert orjson.loads(body) == {
        "error": "sollol-proxy: no free slot for model 'llama3.2:latest' within 0.3s "
        "(priority 1); the fleet is at capacity"
    }
    assert int(headers["X-Sollol-Queue-Ms"]) >= 300  # how long it waited before the 503
    assert (await urgent)[0] == 200  # outside the band: the queue's own 20 s applied
    await busy
    assert "batch" not in prompts_seen(made.node("a"))


async def test_a_client_that_leaves_while_queued_leaves_the_queue_at_once(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await one_slot(cluster)
    busy = await occupy(http, made, tokens=40)
    leaving = asyncio.create_task(call(http, made, generate("llama3.2", "gone"), 5))
    await eventually(lambda: admission(made).snapshot()["depth"] == 1)
    leaving.cancel()
    await eventually(lambda: admission(made).snapshot()["depth"] == 0)
    assert admission(made).snapshot()["by_priority"]["5"]["left"] == 1
    await busy
    status, _, _ = await call(http, made, generate("llama3.2", "next"))
    assert status == 200
    assert prompts_seen(made.node("a")) == ["occupier", "next"]


@pytest.mark.parametrize(
    "fault",
    [
        {"refuse": True},
        {"status_error": (500, "llama runner process has terminated")},
        {"mid_stream_error": (2, "llama runner process has terminated")},
        {"reset_after_chunks": 2},
        {"stall_after_chunks": 1},
    ],
    ids=["refused", "status_500", "error_in_stream", "reset_mid_stream", "stall"],
)
async def test_the_slot_comes_back_after_every_kind_of_failure(
    cluster: ClusterFactory, http: aiohttp.ClientSession, fault: dict[str, Any]
) -> None:
    made = await one_slot(cluster, timeouts__idle_read=0.3)
    for name, value in fault.items():
        setattr(made.node("a").faults, name, value)
    await call(http, made, generate("llama3.2", "doomed", 5))
    await eventually(lambda: admission(made).snapshot()["slots_in_use"] == {})
    assert made.fleet.nodes["a"].in_flight == 0


async def test_the_slot_comes_back_when_the_client_leaves_mid_stream(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await one_slot(cluster)
    async with http.post(made.url + "/api/generate", data=generate("llama3.2", "x", 80)) as r:
        await r.content.readline()
        assert admission(made).slots.in_use("a") == {"llama3.2:latest": 1}
    await eventually(lambda: admission(made).snapshot()["slots_in_use"] == {})


async def test_a_freed_slot_prefers_a_request_for_the_loaded_model(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # One model at a time on the node: serving the older request for the other model first
    # would unload the running one and load it again right after.
    made = await cluster(
        dict(
            name="a",
            models=["llama3.2", "qwen2.5:7b"],
            token_delay=TOKEN_DELAY,
            max_loaded_models=1,
        )
    )
    busy = await occupy(http, made, tokens=40)
    other = asyncio.create_task(
        call(http, made, orjson.dumps({"model": "qwen2.5:7b", "prompt": "other"}))
    )
    await eventually(lambda: admission(made).snapshot()["depth"] == 1)
    same = asyncio.create_task(call(http, made, generate("llama3.2", "same")))
    await eventually(lambda: admission(made).snapshot()["depth"] == 2)
    await asyncio.gather(busy, other, same)
    assert prompts_seen(made.node("a")) == ["occupier", "same", "other"]
    assert made.node("a").stats.loads == 2  # llama3.2 once, qwen2.5 once: no swap back


async def test_a_queued_request_through_the_ollama_client(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await one_slot(cluster, queue__max_length=1)
    busy = await occupy(http, made, tokens=40)
    client = ollama.AsyncClient(host=made.url, headers={"X-Sollol-Priority": "high"})
    queued = asyncio.create_task(client.generate(model="llama3.2", prompt="queued"))
    await eventually(lambda: admission(made).snapshot()["depth"] == 1)
    with pytest.raises(ollama.ResponseError) as rejected:
        await ollama.AsyncClient(host=made.url).generate(model="llama3.2", prompt="too many")
    assert rejected.value.status_code == 503
    assert "the queue is full" in rejected.value.error
    answer = await queued
    assert answer.done and answer.response
    await busy


def test_queue_settings_from_file_and_environment(tmp_path: Any) -> None:
    path = tmp_path / "sollol.yaml"
    path.write_text(
        "nodes: [a]\n"
        "queue:\n"
        "  max_wait: 2m\n"
        "  ageing: 5s\n"
        "  affinity_window: 1.5\n"
        "  bands:\n"
        "    - {priorities: 8-10, max_wait: 30s}\n"
        "    - {priorities: 1, max_length: 10}\n"
    )
    config = load_config(path, env={"SOLLOL_QUEUE_MAX_LENGTH": "50", "SOLLOL_QUEUE_ENABLED": "no"})
    queue = config.queue
    assert (queue.enabled, queue.max_length, queue.max_wait, queue.ageing) == (False, 50, 120, 5)
    assert queue.affinity_window == 1.5
    assert queue.band(9) == QueueBand(8, 10, 30.0, None)
    assert queue.band(1) == QueueBand(1, 1, None, 10)
    assert queue.band(5) is None
    assert load_config(None, env={}, overrides={"nodes": ["a"]}).queue == QueueConfig()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("queue: {enabled: maybe}", "queue.enabled: expected true or false, got 'maybe'"),
        ("queue: {max_length: -1}", "queue.max_length: expected an integer from 0 to 1000000"),
        ("queue: {ageing: 0}", "queue.ageing: must be greater than zero"),
        ("queue: {affinity_window: 11}", "queue.affinity_window: expected priority levels"),
        ("queue: {depth: 3}", "queue.depth: unknown key"),
        ("queue: {bands: [{priorities: 9-12}]}", "queue.bands[0].priorities: expected priorities"),
        (
            "queue: {bands: [{priorities: 5-9}, {priorities: 9}]}",
            "queue.bands[1].priorities: 9-9 overlaps the band 5-9",
        ),
        ("queue: {bands: [{priorities: 1, max_wait: soon}]}", "queue.bands[0].max_wait: expected"),
        ("queue: {bands: [{priorities: 1, burst: 3}]}", "queue.bands[0].burst: unknown key"),
    ],
)
def test_queue_setting_errors_name_the_file_and_key(
    tmp_path: Any, text: str, expected: str
) -> None:
    path = tmp_path / "sollol.yaml"
    path.write_text("nodes: [a]\n" + text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: {expected}"), str(info.value)


async def test_a_reload_changes_the_queue_bounds_and_keeps_who_waits(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await one_slot(cluster, queue__max_length=5)
    app = made.proxy.runner.app
    busy = await occupy(http, made, tokens=40)
    waiting = asyncio.create_task(call(http, made, generate("llama3.2", "kept"), 5))
    await eventually(lambda: admission(made).snapshot()["depth"] == 1)
    overrides = {
        **TEST_SETTINGS,
        "nodes": [{"url": made.node("a").url, "name": "a", "num_parallel": 1}],
        "queue.max_length": 1,
    }
    apply_config(app, load_config(None, env={}, overrides=overrides))
    assert admission(made).config.max_length == 1
    status, body, _ = await call(http, made, generate("llama3.2", "over"), 5)
    assert status == 503 and "the queue is full (1 requests waiting)" in orjson.loads(body)["error"]
    assert [r[0] for r in await asyncio.gather(busy, waiting)] == [200, 200]
    assert prompts_seen(made.node("a")) == ["occupier", "kept"]


async def test_a_model_that_would_not_fit_beside_a_busy_one_waits_in_the_proxy(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # Two 4 GiB models on a node with 6 GiB for models: Ollama would have to unload the busy
    # one first, so the second waits here rather than inside Ollama.
    gib = 2**30
    made = await cluster(
        dict(
            name="a",
            models=[SimModel("m1:latest", size=4 * gib), SimModel("m2:latest", size=4 * gib)],
            vram_bytes=6 * gib,
            token_delay=TOKEN_DELAY,
        )
    )
    first = asyncio.create_task(call(http, made, generate("m1", "first", 40)))
    await eventually(lambda: admission(made).slots.in_use("a") == {"m1:latest": 1})
    second = asyncio.create_task(call(http, made, generate("m2", "second")))
    await eventually(lambda: admission(made).snapshot()["depth"] == 1)
    assert [r[0] for r in await asyncio.gather(first, second)] == [200, 200]
    assert prompts_seen(made.node("a")) == ["first", "second"]
    assert made.node("a").stats.evictions == 1


async def test_max_length_zero_serves_a_free_slot_and_refuses_to_wait(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # max_length 0 means "never wait", not "never serve" (was: 503 even with the slot free).
    made = await one_slot(cluster, queue__max_length=0)
    status, body, headers = await call(http, made, generate("llama3.2", "idle"))
    assert status == 200, body  # was: 503, the bound was checked before the free slot
    assert headers["X-Sollol-Queue-Ms"] == "0"
    busy = await occupy(http, made, tokens=40)
    status, body, headers = await call(http, made, generate("llama3.2", "refused"))
    assert (status, headers["Retry-After"]) == (503, "5")
    assert "the queue holds no request (max_length 0)" in orjson.loads(body)["error"]
    assert (await busy)[0] == 200
    assert prompts_seen(made.node("a")) == ["idle", "occupier"]


async def test_a_full_queue_still_starts_a_request_an_idle_node_can_serve(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # The length bound is for requests that must wait, not one idle node b can start now.
    made = await cluster(
        dict(name="a", models=["llama3.2"], token_delay=TOKEN_DELAY),
        dict(name="b", models=["qwen2.5:7b"], token_delay=TOKEN_DELAY),
        queue__max_length=1,
    )
    busy = await occupy(http, made, tokens=60)
    waiting = asyncio.create_task(call(http, made, generate("llama3.2", "waiting")))
    await eventually(lambda: admission(made).snapshot()["depth"] == 1)
    for priority in (5, 9):  # as urgent as the waiter (was: rejected), more urgent (was: shed)
        status, body, headers = await call(http, made, generate("qwen2.5:7b", "b"), priority)
        assert status == 200, body
        assert (headers["X-Sollol-Node"], headers["X-Sollol-Queue-Ms"]) == ("b", "0")
    assert admission(made).snapshot()["depth"] == 1
    assert [r[0] for r in await asyncio.gather(busy, waiting)] == [200, 200]
    stats = admission(made).snapshot()["by_priority"]
    assert sum(s["rejected"] + s["shed"] for s in stats.values()) == 0


def bare_node(name: str) -> NodeState:
    node = NodeState(NodeConfig(url=f"http://{name}:1", name=name, num_parallel=1))
    node.healthy = True
    node.models["m"] = {}
    return node


async def test_moving_a_slot_never_puts_two_requests_on_a_one_slot_node() -> None:
    # Slot.hold takes b's slot before giving a's back (was: the pump gave b's only slot away).
    queue = Admission(QueueConfig())
    a, b = bare_node("a"), bare_node("b")
    b_admits = False  # b is out (busy or ejected) until the moment the failover moves to it

    def candidates() -> list[NodeState]:
        return [a, b] if b_admits else [a]

    def prefer_b(free: list[NodeState]) -> Plan:
        ranked = sorted(free, key=lambda n: n.name != "b")
        return Plan([Target(n, "test", Reason.LEAST_LOADED) for n in ranked])

    granted: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    finish = asyncio.Event()

    async def waiter() -> None:
        async with queue.admit(5, "m", ("m",), candidates, prefer_b) as slot:
            assert slot.node is not None
            granted.set_result(slot.node.name)
            await finish.wait()

    async with queue.admit(5, "m", ("m",), candidates, prefer_b) as moving:
        task = asyncio.create_task(waiter())
        await eventually(lambda: queue.waiting == 1)
        b_admits = True
        assert moving.hold(b)  # the failover from a to b
        assert await asyncio.wait_for(granted, 5) == "a"  # the slot a gave back, not b's
        assert queue.slots.all_in_use() == {"a": {"m": 1}, "b": {"m": 1}}
        finish.set()
        await task
    assert queue.slots.all_in_use() == {}


async def test_a_node_on_trial_gets_one_request_at_a_time(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # A half_open node with two slots takes a second request only once its trial has answered.
    made = await cluster(
        dict(name="a", models=["llama3.2"], num_parallel=2, token_delay=TOKEN_DELAY)
    )
    health = made.fleet.nodes["a"].health
    for _ in range(3):
        health.failed(Failure.SERVER_ERROR, "answered 500")
    assert health.current() is State.EJECTED
    health.cut_short()  # the ejection ends now: one trial request
    assert health.current() is State.HALF_OPEN
    made.node("a").faults.first_byte_delay = 2.0  # the trial answers only after 2 s
    both = [asyncio.create_task(call(http, made, generate("llama3.2", f"r{i}"))) for i in range(2)]
    await eventually(
        lambda: admission(made).waiting == 1 and len(prompts_seen(made.node("a"))) == 1
    )
    await asyncio.sleep(0.5)  # well within the trial's 2 s: the second is still held back
    assert admission(made).waiting == 1
    assert len(prompts_seen(made.node("a"))) == 1
    results = await asyncio.gather(*both)
    assert [r[0] for r in results] == [200, 200]
    assert sorted(int(r[2]["X-Sollol-Queue-Ms"]) > 1000 for r in results) == [False, True]
    assert health.current() is State.UP


async def test_a_request_queued_for_a_model_whose_nodes_go_down_gets_503_at_once(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # A waiter whose every candidate node goes down is answered then, not after max_wait.
    made = await one_slot(cluster, queue__max_wait=60)
    busy = await occupy(http, made, tokens=1000)
    queued = asyncio.create_task(call(http, made, generate("llama3.2", "queued")))
    await eventually(lambda: admission(made).snapshot()["depth"] == 1)
    made.node("a").faults.refuse = True
    status, body, _ = await asyncio.wait_for(queued, 15)
    assert status == 503
    assert orjson.loads(body)["error"].startswith(
        "model 'llama3.2:latest' is only on nodes that are down (a: "
    )
    assert admission(made).snapshot()["depth"] == 0
    busy.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await busy


async def test_without_the_queue_slots_are_still_counted(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # queue.enabled false is plain pass-through, but the slots in use stay visible.
    made = await one_slot(cluster, queue__enabled=False)
    running = asyncio.create_task(call(http, made, generate("llama3.2", "running", 40)))
    await eventually(lambda: prompts_seen(made.node("a")) == ["running"])
    assert admission(made).snapshot()["slots_in_use"] == {"a": {"llama3.2:latest": 1}}
    assert (await running)[0] == 200
    await eventually(lambda: admission(made).snapshot()["slots_in_use"] == {})


async def test_an_embedding_model_gets_one_slot_whatever_num_parallel_says(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # Ollama forces embedding-only models to one slot (reference 5.1): the proxy reads that from
    # /api/tags, for admission and for what the dashboard shows. One more embedding request may
    # wait inside Ollama behind the running one (capacity.model_room); a third waits here.
    made = await cluster(dict(name="a", models=["all-minilm"], num_parallel=4))
    made.node("a").faults.first_byte_delay = 0.5
    body = orjson.dumps({"model": "all-minilm", "input": "hello"})

    async def embed() -> int:
        async with http.post(made.url + "/api/embed", data=body) as response:
            await response.read()
            return response.status

    first = asyncio.create_task(embed())
    await eventually(lambda: admission(made).slots.in_use("a") == {"all-minilm:latest": 1})
    second = asyncio.create_task(embed())
    await eventually(lambda: admission(made).slots.in_use("a") == {"all-minilm:latest": 2})
    third = asyncio.create_task(embed())
    await eventually(lambda: admission(made).snapshot()["depth"] == 1)
    assert made.node("a").in_flight() == 2
    assert await asyncio.gather(first, second, third) == [200, 200, 200]
    async with http.get(made.url + "/sollol/dashboard") as response:
        node = orjson.loads(await response.read())["nodes"][0]
    assert node["slots_per_model"] == 4
    assert node["loaded"] == [
        {"model": "all-minilm:latest", "in_flight": 0, "slots": 1, "slots_source": "configured"}
    ]


async def test_the_queue_endpoint_named_priorities_and_slots_in_nodes(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # GET /sollol/queue over HTTP, `batch` as a priority name, slots_in_use in /sollol/nodes.
    made = await one_slot(cluster)
    busy = await occupy(http, made, tokens=40)
    queued = asyncio.create_task(
        call(http, made, generate("llama3.2", "b"), headers={"X-Sollol-Priority": "batch"})
    )
    await eventually(lambda: admission(made).snapshot()["depth"] == 1)
    async with http.get(made.url + "/sollol/queue") as response:
        queue = orjson.loads(await response.read())
    assert (queue["depth"], queue["by_priority"]["1"]["waiting"]) == (1, 1)
    assert [(w["model"], w["priority"]) for w in queue["waiting"]] == [("llama3.2:latest", 1)]
    assert queue["slots_in_use"] == {"a": {"llama3.2:latest": 1}}
    async with http.get(made.url + "/sollol/nodes") as response:
        nodes = orjson.loads(await response.read())["nodes"]
    assert nodes[0]["slots_in_use"] == {"llama3.2:latest": 1}
    assert [r[0] for r in await asyncio.gather(busy, queued)] == [200, 200]


async def test_a_request_cancelled_as_its_slot_frees_leaves_the_slot_to_the_next() -> None:
    # The waiter's future is awaited bare (no shield): cancelling the request cancels it at
    # once, and a slot freed before the request has left the queue goes to the next waiter,
    # not to the cancelled one (whose Slot nobody would give back).
    queue = Admission(QueueConfig())
    a = bare_node("a")

    def least(free: list[NodeState]) -> Plan:
        return Plan([Target(n, "test", Reason.LEAST_LOADED) for n in free])

    async def wait_for_slot() -> str:
        async with queue.admit(5, "m", ("m",), lambda: [a], least) as slot:
            assert slot.node is not None
            return slot.node.name

    async with queue.admit(5, "m", ("m",), lambda: [a], least):
        first = asyncio.create_task(wait_for_slot())
        await eventually(lambda: queue.waiting == 1)
        second = asyncio.create_task(wait_for_slot())
        await eventually(lambda: queue.waiting == 2)
        first.cancel()  # its future is cancelled now; the task has not run its handler yet
    # The block's end gave the slot back (and pumped) before the first task ran again.
    assert await asyncio.wait_for(second, 5) == "a"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert queue.slots.all_in_use() == {} and queue.waiting == 0
    assert queue.stats[5].left == 1 and queue.stats[5].admitted == 2


async def test_the_maximum_wait_answers_the_waiter_without_cancelling_it() -> None:
    queue = Admission(QueueConfig(max_wait=0.05))
    a = bare_node("a")

    def least(free: list[NodeState]) -> Plan:
        return Plan([Target(n, "test", Reason.LEAST_LOADED) for n in free])

    async with queue.admit(5, "m", ("m",), lambda: [a], least):
        with pytest.raises(QueueRejected) as refused:
            async with queue.admit(5, "m", ("m",), lambda: [a], least):
                pass
    assert refused.value.reason == "timeout" and "within 0.05s" in refused.value.message
    assert queue.stats[5].timed_out == 1 and queue.waiting == 0
    assert queue.slots.all_in_use() == {}
