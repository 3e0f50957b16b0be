"""/metrics after real traffic through simulated nodes: the series exist and the values add up."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from sollol_proxy.app import ADMISSION
from tests.conftest import ClusterFactory, eventually

MODEL = "llama3.2:latest"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = (await response.read()).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == name]


async def post(http: aiohttp.ClientSession, url: str, path: str, body: dict) -> tuple[int, bytes]:
    async with http.post(url + path, data=orjson.dumps(body)) as response:
        return response.status, await response.read()


async def test_counts_histograms_and_tokens_match_the_traffic(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL]),
        dict(name="b", models=[MODEL]),
        routing__strategy="round_robin",
    )
    tokens_in = tokens_out = 0
    for _ in range(3):
        status, body = await post(
            http,
            made.url,
            "/api/chat",
            {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False},
        )
        final = orjson.loads(body)
        assert status == 200
        tokens_in += final["prompt_eval_count"]
        tokens_out += final["eval_count"]
    for _ in range(2):
        status, body = await post(
            http, made.url, "/api/generate", {"model": "llama3.2", "prompt": "tell me a story"}
        )
        final = orjson.loads(body.splitlines()[-1])
        tokens_in += final["prompt_eval_count"]
        tokens_out += final["eval_count"]
    status, _ = await post(http, made.url, "/api/chat", {"model": "no-such-model", "messages": []})
    assert status == 404

    samples = await scrape(http, made.url)
    requests = "sollol_requests_total"
    assert total(samples, requests, endpoint="/api/chat", model=MODEL, status="200") == 3
    assert total(samples, requests, endpoint="/api/generate", model=MODEL, status="200") == 2
    # Round robin over two nodes: both served.
    assert total(samples, requests, node="a") >= 2 and total(samples, requests, node="b") >= 2
    # A model no node has is counted, under a bounded label.
    assert total(samples, requests, endpoint="/api/chat", model="other", status="404") == 1
    # The proxy's own endpoints (this scrape, dashboards) are not traffic.
    assert not [s for s in series(samples, requests) if s["endpoint"] == "/sollol/"]
    assert total(samples, requests) == 6

    duration = "sollol_request_duration_seconds"
    assert total(samples, duration + "_count", endpoint="/api/chat", model=MODEL) == 3
    assert total(samples, duration + "_bucket", endpoint="/api/chat", model=MODEL, le="+Inf") == 3
    assert total(samples, duration + "_sum", endpoint="/api/chat", model=MODEL) > 0
    # Time to first token is for streamed answers only (a non-streamed answer's first byte is
    # its last), and only for answers (the 404 streamed no token).
    ttft = "sollol_time_to_first_token_seconds"
    assert total(samples, ttft + "_count", endpoint="/api/generate", model=MODEL) == 2
    assert total(samples, ttft + "_count", endpoint="/api/chat") == 0

    assert total(samples, "sollol_input_tokens_total", model=MODEL) == tokens_in > 0
    assert total(samples, "sollol_output_tokens_total", model=MODEL) == tokens_out > 0
    assert (
        total(
            samples, "sollol_routing_decisions_total", strategy="round_robin", reason="round_robin"
        )
        == 5
    )
    assert (
        total(
            samples, "sollol_routing_decisions_total", strategy="none", reason="no_node_has_model"
        )
        == 1
    )


async def test_node_up_follows_a_node_going_down_and_coming_back(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]), dict(name="b", models=[MODEL]))
    samples = await scrape(http, made.url)
    assert total(samples, "sollol_node_up", node="a") == 1
    assert total(samples, "sollol_node_up", node="b") == 1
    assert total(samples, "sollol_node_models_available", node="b") == 1

    made.node("b").faults.refuse = True
    latest: dict[str, Samples] = {}

    async def poll() -> None:
        while True:
            latest["s"] = await scrape(http, made.url)
            await asyncio.sleep(0.1)

    poller = asyncio.create_task(poll())
    try:
        await eventually(
            lambda: "s" in latest and total(latest["s"], "sollol_node_up", node="b") == 0
        )
        assert total(latest["s"], "sollol_node_up", node="a") == 1
        made.node("b").faults.refuse = False
        await eventually(lambda: total(latest["s"], "sollol_node_up", node="b") == 1)
    finally:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)


async def test_failovers_and_mid_stream_failures_are_counted(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL]),
        dict(name="b", models=[MODEL]),
        routing__strategy="least_loaded",
    )
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}
    # A refusing node ranked first: the proxy gives it up and answers from the other one.
    made.node("a").faults.refuse = True
    made.fleet.nodes["b"].model_in_flight[MODEL] = 1
    try:
        status, _ = await post(http, made.url, "/api/chat", chat)
    finally:
        del made.fleet.nodes["b"].model_in_flight[MODEL]
    assert status == 200
    made.node("a").faults.refuse = False
    await eventually(lambda: made.fleet.nodes["a"].healthy)
    # Now a node that breaks the stream after two chunks.
    made.node("b").faults.reset_after_chunks = 2
    made.fleet.nodes["a"].model_in_flight[MODEL] = 1
    try:
        status, body = await post(http, made.url, "/api/chat", chat)
    finally:
        del made.fleet.nodes["a"].model_in_flight[MODEL]
    assert b"failed mid-response" in body

    samples = await scrape(http, made.url)
    assert total(samples, "sollol_failovers_total", node="a") == 1
    assert total(samples, "sollol_failovers_total") == 1
    assert total(samples, "sollol_midstream_failures_total", node="b") == 1
    assert total(samples, "sollol_midstream_failures_total") == 1
    assert total(samples, "sollol_node_success_rate", node="a") < 1


async def test_live_gauges_show_slots_in_use_loaded_models_and_learned_rates(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL], num_parallel=2, token_delay=0.05, deterministic=False)
    )
    body = orjson.dumps(
        {"model": "llama3.2", "prompt": "long story", "options": {"num_predict": 60}}
    )
    # A streamed answer of 60 tokens 50 ms apart: in flight for about three seconds.
    async with http.post(made.url + "/api/generate", data=body) as response:
        await response.content.readline()
        samples = await scrape(http, made.url)
        assert total(samples, "sollol_node_in_flight", node="a") == 1
        assert total(samples, "sollol_node_slots_in_use", node="a", model=MODEL) == 1
        assert total(samples, "sollol_node_slots", node="a") == 2
        await response.read()
    samples = await scrape(http, made.url)
    assert total(samples, "sollol_node_in_flight", node="a") == 0
    assert series(samples, "sollol_node_slots_in_use") == []
    assert total(samples, "sollol_node_loaded_models", node="a") == 1
    assert total(samples, "sollol_node_model_loaded", node="a", model=MODEL) == 1
    decode = total(samples, "sollol_learned_decode_tokens_per_second", node="a", model=MODEL)
    assert 0 < decode <= 25  # 20 tokens/s by the simulator's clock; a loaded machine is slower
    assert total(samples, "sollol_learned_ttft_seconds", node="a", model=MODEL) > 0
    assert total(samples, "sollol_node_success_rate", node="a") == 1


async def test_model_labels_stay_bounded(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]))
    for index in range(5):
        await post(http, made.url, "/api/generate", {"model": f"made-up-{index}", "prompt": "x"})
    samples = await scrape(http, made.url)
    models = {s["model"] for s in series(samples, "sollol_requests_total")}
    assert models == {"other"}


async def test_metrics_on_a_port_of_their_own(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    made = await cluster(dict(name="a", models=[MODEL]), metrics__port=port)
    await post(http, made.url, "/api/generate", {"model": "llama3.2", "prompt": "x"})
    samples = await scrape(http, f"http://127.0.0.1:{port}")
    assert total(samples, "sollol_requests_total", endpoint="/api/generate") == 1
    assert total(samples, "sollol_node_up", node="a") == 1
    async with http.get(f"http://127.0.0.1:{port}/api/tags") as response:
        assert response.status == 404  # that port serves metrics only
    # The main port keeps serving them too.
    assert total(await scrape(http, made.url), "sollol_node_up", node="a") == 1


async def test_management_fan_out_is_one_request_labelled_fanout(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]), dict(name="b", models=[MODEL]))
    status, _ = await post(http, made.url, "/api/pull", {"model": "mistral", "stream": False})
    assert status == 200
    samples = await scrape(http, made.url)
    assert total(samples, "sollol_requests_total", endpoint="/api/pull", node="fanout") == 1
    assert total(samples, "sollol_routing_decisions_total") == 0  # no routing decision


async def test_queue_depth_wait_and_rejections_by_priority(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL], token_delay=0.02), queue__max_length=1)
    slow = {"model": MODEL, "prompt": "x", "options": {"num_predict": 40}}
    busy = asyncio.create_task(post(http, made.url, "/api/generate", slow))
    await eventually(lambda: made.fleet.nodes["a"].in_flight == 1)
    waiting = asyncio.create_task(
        post(http, made.url, "/api/generate?priority=9", {**slow, "options": {"num_predict": 1}})
    )
    samples: Samples = {}

    async def one_waiting() -> bool:
        nonlocal samples
        samples = await scrape(http, made.url)
        return total(samples, "sollol_queue_waiting", priority="9") == 1

    deadline = asyncio.get_running_loop().time() + 5
    while not await one_waiting():
        assert asyncio.get_running_loop().time() < deadline
    assert total(samples, "sollol_queue_oldest_wait_seconds", priority="9") > 0
    status, _ = await post(http, made.url, "/api/generate?priority=2", slow)
    assert status == 503  # the queue holds one, and priority 2 is not more urgent
    await asyncio.gather(busy, waiting)
    samples = await scrape(http, made.url)
    assert total(samples, "sollol_queue_waiting") == 0
    assert total(samples, "sollol_queue_rejections_total", priority="2", reason="full") == 1
    assert total(samples, "sollol_queue_wait_seconds_count", priority="9") == 1
    assert total(samples, "sollol_queue_wait_seconds_sum", priority="9") > 0.1
    assert total(samples, "sollol_queue_wait_seconds_count", priority="5") == 1  # the first


async def test_health_states_ejections_and_retries(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL]),
        dict(name="b", models=[MODEL]),
        routing__strategy="round_robin",
        outlier__base_ejection="60s",
        outlier__max_ejection="5m",
    )
    made.node("b").faults.status_error = (500, "llama runner process has terminated")
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    statuses = [(await post(http, made.url, "/api/generate", body))[0] for _ in range(8)]
    assert statuses == [200] * 8  # b's 500s were retried on a
    samples = await scrape(http, made.url)
    assert total(samples, "sollol_node_state", node="b", state="ejected") == 1
    assert total(samples, "sollol_node_state", node="b") == 1  # exactly one state at a time
    assert total(samples, "sollol_node_state", node="a", state="up") == 1
    assert total(samples, "sollol_node_ejections_total", node="b") == 1
    assert total(samples, "sollol_node_retries_total", node="a") == 3
    assert total(samples, "sollol_retries_refused_total") == 0
    async with http.get(made.url + "/sollol/dashboard") as response:
        alerts = orjson.loads(await response.read())["alerts"]
    kinds = {(a["severity"], a["kind"], a["node"]) for a in alerts}
    assert kinds == {("critical", "ejected", "b"), ("warning", "errors", "b")}


async def test_busy_cool_downs_are_counted(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # Guards: sollol_node_busy_total counts Ollama's queue-full 503 that cooled a node down.
    made = await cluster(
        dict(name="a", models=[MODEL]),
        dict(name="b", models=[MODEL]),
        routing__strategy="round_robin",
        outlier__busy_cooldown="60s",
    )
    made.node("a").faults.status_error = (
        503,
        "server busy, please try again.  maximum pending requests exceeded",
    )
    status, _ = await post(http, made.url, "/api/generate", {"model": MODEL, "prompt": "x"})
    assert status == 200  # round robin: a first, busy; b answered
    samples = await scrape(http, made.url)
    assert total(samples, "sollol_node_busy_total", node="a") == 1
    assert total(samples, "sollol_node_busy_total", node="b") == 0
    assert total(samples, "sollol_node_state", node="a", state="busy") == 1
    assert total(samples, "sollol_node_ejections_total", node="a") == 0  # not an ejection


async def test_a_client_that_leaves_while_queued_is_counted_as_abandoned(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # Guards: sollol_queue_abandoned_total{priority} counts a client gone while it waited.
    made = await cluster(dict(name="a", models=[MODEL], token_delay=0.02))
    long = orjson.dumps({"model": MODEL, "prompt": "x", "options": {"num_predict": 500}})
    async with http.post(made.url + "/api/generate", data=long) as holder:
        await holder.content.readline()  # the only slot is taken
        gone = {"model": MODEL, "prompt": "gone"}
        leaving = asyncio.create_task(post(http, made.url, "/api/generate?priority=3", gone))
        await eventually(lambda: made.proxy.runner.app[ADMISSION].waiting == 1)
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
        await eventually(lambda: made.proxy.runner.app[ADMISSION].waiting == 0)
        samples = await scrape(http, made.url)
    assert total(samples, "sollol_queue_abandoned_total", priority="3") == 1
    assert total(samples, "sollol_queue_abandoned_total") == 1
    assert total(samples, "sollol_queue_rejections_total", priority="3") == 0
