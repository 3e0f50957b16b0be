"""The routing engine end to end: decisions, learning, affinity, priority, per-model strategies."""

from __future__ import annotations

import re

import aiohttp
import orjson
import pytest

from tests.conftest import ClusterFactory

SYSTEM = "You answer questions about the cluster. " * 120


async def chat(
    http: aiohttp.ClientSession, url: str, messages: list[dict], **extra: object
) -> aiohttp.ClientResponse:
    body = orjson.dumps({"model": "llama3.2", "messages": messages, "stream": False, **extra})
    async with http.post(url + "/api/chat", data=body) as response:
        await response.read()
        return response


async def get_json(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url) as response:
        assert response.headers["Content-Type"] == "application/json"
        return orjson.loads(await response.read())


async def test_decisions_endpoint_explains_each_choice(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]), dict(name="b", models=["llama3.2:latest"])
    )
    first = await chat(http, made.url, [{"role": "user", "content": "Summarize this text: ..."}])
    second = await chat(http, made.url, [{"role": "user", "content": "Write a python function"}])
    decisions = (await get_json(http, made.url + "/sollol/decisions"))["decisions"]
    assert [d["request_id"] for d in decisions[:2]] == [
        second.headers["X-Sollol-Request-Id"],
        first.headers["X-Sollol-Request-Id"],
    ]
    latest = decisions[0]
    assert latest["task"] == "code" and decisions[1]["task"] == "summarization"
    assert latest["strategy"] == "performance" and latest["node"] == latest["served_by"]
    assert latest["node"] == second.headers["X-Sollol-Node"]
    assert second.headers["X-Sollol-Route"] == "performance: " + latest["reason"]
    assert {c["node"] for c in latest["candidates"]} == {"a", "b"}
    assert set(latest["candidates"][0]["estimate_s"]) == {
        "total",
        "wait",
        "load",
        "evict",
        "prefill",
        "decode",
    }
    assert len((await get_json(http, made.url + "/sollol/decisions?limit=1"))["decisions"]) == 1
    async with http.get(made.url + "/sollol/nope") as response:
        assert response.status == 404


async def test_learns_speed_from_ollamas_timing_fields(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="fast", models=["llama3.2:latest"], token_delay=0.002, deterministic=False),
        dict(name="slow", models=["llama3.2:latest"], token_delay=0.02, deterministic=False),
        routing__strategy="round_robin",
    )
    for _ in range(4):
        await chat(http, made.url, [{"role": "user", "content": "x"}], options={"num_predict": 20})
    nodes = {n["name"]: n for n in (await get_json(http, made.url + "/sollol/nodes"))["nodes"]}
    fast = nodes["fast"]["learned"]["models"]["llama3.2:latest"]
    slow = nodes["slow"]["learned"]["models"]["llama3.2:latest"]
    assert fast["decode_tokens_per_s"] > 3 * slow["decode_tokens_per_s"] > 0
    assert nodes["fast"]["loaded"] == ["llama3.2:latest"] and nodes["fast"]["healthy"]
    await made.fleet.refresh_all()
    nodes = {n["name"]: n for n in (await get_json(http, made.url + "/sollol/nodes"))["nodes"]}
    assert nodes["fast"]["vram_in_use"] == made.node("fast").catalog_lookup("llama3.2:latest").size
    assert nodes["fast"]["learned"]["success_rate"] == 1.0


async def test_a_conversation_stays_where_its_prompt_is_cached(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]),
        dict(name="b", models=["llama3.2:latest"]),
        dict(name="c", models=["llama3.2:latest"]),
    )
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "first question"},
    ]
    response = await chat(http, made.url, messages)
    home = response.headers["X-Sollol-Node"]
    for turn in range(4):
        messages += [
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": f"more {turn}"},
        ]
        response = await chat(http, made.url, messages)
        assert response.headers["X-Sollol-Node"] == home
        assert "k cached tokens" in response.headers["X-Sollol-Route"]  # 1.2k and growing
    assert made.node(home).stats.cached_tokens > 0


async def test_the_proxys_own_dispatches_update_residency_at_once(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest", "qwen2.5:7b"], max_loaded_models=1),
        health__interval=3600,
        inventory__interval=3600,
    )
    node = made.fleet.nodes["a"]
    await chat(http, made.url, [{"role": "user", "content": "x"}])
    assert node.is_resident("llama3.2:latest")  # no /api/ps poll since: the proxy saw it served
    body = orjson.dumps({"model": "qwen2.5:7b", "messages": [], "stream": False})
    async with http.post(made.url + "/api/chat", data=body) as response:
        assert response.status == 200
    # Loading qwen on a node that holds one model unloads llama3.2 there, and the proxy knows.
    assert node.is_resident("qwen2.5:7b") and not node.is_resident("llama3.2:latest")
    assert made.node("a").loaded_models() == ["qwen2.5:7b"]


@pytest.mark.parametrize(
    ("header", "query", "expected"),
    [
        ({}, "", 5),
        ({"X-Sollol-Priority": "9"}, "", 9),
        ({}, "?priority=high", 8),
        ({"X-Sollol-Priority": "low"}, "?priority=9", 2),
    ],
)
async def test_priority_is_read_and_recorded(
    cluster: ClusterFactory, http: aiohttp.ClientSession, header: dict, query: str, expected: int
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    body = b'{"model":"llama3.2","messages":[],"stream":false}'
    async with http.post(made.url + "/api/chat" + query, data=body, headers=header) as response:
        assert response.status == 200
    assert (await get_json(http, made.url + "/sollol/decisions"))["decisions"][0][
        "priority"
    ] == expected
    seen = made.node("a").requests[-1]
    assert seen.query_string == query.lstrip("?") and "X-Sollol-Priority" not in seen.headers


async def test_invalid_priority_is_an_ollama_shaped_400(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    async with http.post(
        made.url + "/api/chat",
        data=b'{"model":"llama3.2"}',
        headers={"X-Sollol-Priority": "urgent"},
    ) as r:
        assert r.status == 400
        assert orjson.loads(await r.read()) == {
            "error": "invalid priority 'urgent': expected 0 to 10 or one of batch, low, normal, high, critical"
        }


async def test_strategy_per_model(cluster: ClusterFactory, http: aiohttp.ClientSession) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest", "qwen2.5:7b"]),
        dict(name="b", models=["llama3.2:latest", "qwen2.5:7b"]),
        routing__models={"qwen2.5:7b": "round_robin"},
    )
    served = []
    for _ in range(4):
        body = b'{"model":"qwen2.5:7b","messages":[],"stream":false}'
        async with http.post(made.url + "/api/chat", data=body) as r:
            assert r.headers["X-Sollol-Route"].startswith("round_robin: turn ")
            served.append(r.headers["X-Sollol-Node"])
    assert served[0] != served[1] and served[:2] == served[2:]
    response = await chat(http, made.url, [{"role": "user", "content": "x"}])
    assert response.headers["X-Sollol-Route"].startswith("performance: ")


async def test_a_node_answering_500_loses_traffic(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]), dict(name="b", models=["llama3.2:latest"])
    )
    made.node("a").faults.status_error = (500, "an error was encountered while running the model")
    made.fleet.nodes["b"].in_flight += 1  # make a look better until it fails
    statuses = [
        (await chat(http, made.url, [{"role": "user", "content": "x"}])).status for _ in range(4)
    ]
    made.fleet.nodes["b"].in_flight -= 1
    assert statuses == [200] * 4  # a's 500s are retried on b before the client sees anything
    nodes = {n["name"]: n for n in (await get_json(http, made.url + "/sollol/nodes"))["nodes"]}
    assert nodes["a"]["learned"]["success_rate"] < 1.0


async def test_decisions_kept_bounds_the_log(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]), routing__decisions_kept=2)
    ids = [
        (await chat(http, made.url, [{"role": "user", "content": "x"}])).headers[
            "X-Sollol-Request-Id"
        ]
        for _ in range(3)
    ]
    decisions = (await get_json(http, made.url + "/sollol/decisions"))["decisions"]
    assert [d["request_id"] for d in decisions] == ids[:0:-1]


async def test_show_loads_nothing_and_waits_for_no_slot(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"], token_delay=0.1))
    generate = b'{"model":"llama3.2","prompt":"x","options":{"num_predict":30}}'
    async with http.post(made.url + "/api/generate", data=generate) as streaming:
        await streaming.content.readline()  # the only slot is taken for about 3 s
        for method, path, body in (
            ("POST", "/api/show", b'{"model":"llama3.2"}'),
            ("GET", "/v1/models/llama3.2", None),
        ):
            async with http.request(method, made.url + path, data=body) as response:
                assert response.status == 200
                assert response.headers["X-Sollol-Route"] == (
                    "model metadata, nothing to load or generate; least loaded, 1/1 slots busy"
                )
                assert "X-Sollol-Queue-Ms" not in response.headers  # not queued behind it
            assert made.node("a").in_flight() == 1  # answered while the generation runs
        await streaming.read()
    decisions = (await get_json(http, made.url + "/sollol/decisions"))["decisions"]
    assert [d["endpoint"] for d in decisions] == ["generate"]  # no strategy was asked


async def test_show_does_not_make_the_proxy_think_the_model_is_loaded(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest", "qwen2.5:7b"]))
    async with http.post(made.url + "/api/show", data=b'{"model":"qwen2.5:7b"}') as response:
        assert response.status == 200
    node = made.fleet.nodes["a"]
    assert not node.is_resident("qwen2.5:7b") and not node.loading
    assert made.node("a").loaded_models() == []


async def test_embedding_route_says_what_was_estimated(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["all-minilm:latest"]))
    routes = []
    for _ in range(2):
        async with http.post(
            made.url + "/api/embed", data=b'{"model":"all-minilm","input":"hello there"}'
        ) as response:
            assert response.status == 200
            routes.append(response.headers["X-Sollol-Route"])
    assert routes[0].startswith("performance: cold load ")
    assert ", input only, est " in routes[0]
    assert re.fullmatch(r"performance: resident, input only, est \d+ms", routes[1]), routes[1]
    decisions = (await get_json(http, made.url + "/sollol/decisions"))["decisions"]
    assert {d["expected_output_tokens"] for d in decisions} == {0}
    assert all(c["estimate_s"]["decode"] == 0 for d in decisions for c in d["candidates"])
