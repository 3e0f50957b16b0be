"""The proxy's JSON APIs: /sollol/health, /sollol/stats, /sollol/dashboard, their /api aliases."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from sollol_proxy.wire.routes import Kind, classify
from tests.conftest import ClusterFactory, eventually

MODEL = "llama3.2:latest"
SYSTEM = "You answer questions about the cluster. " * 120

# A tiny schema language: a type, a tuple of types, {key: schema} (keys ending in "?" are
# optional, "*" is any key), or [schema] for a list of items.
NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))


def check(value: Any, schema: Any, where: str = "$") -> None:
    if isinstance(schema, dict):
        assert isinstance(value, dict), f"{where}: expected an object, got {value!r}"
        if "*" in schema:
            for key, item in value.items():
                check(item, schema["*"], f"{where}.{key}")
            return
        required = {k for k in schema if not k.endswith("?")}
        optional = {k[:-1] for k in schema if k.endswith("?")}
        assert required <= value.keys(), f"{where}: missing {required - value.keys()}"
        assert value.keys() <= required | optional, f"{where}: extra {value.keys() - required}"
        for key, item in value.items():
            check(item, schema.get(key, schema.get(key + "?")), f"{where}.{key}")
    elif isinstance(schema, list):
        assert isinstance(value, list), f"{where}: expected a list, got {value!r}"
        for index, item in enumerate(value):
            check(item, schema[0], f"{where}[{index}]")
    else:
        assert isinstance(value, schema) and not (
            isinstance(value, bool)
            and bool not in (schema if isinstance(schema, tuple) else (schema,))
        ), f"{where}: expected {schema}, got {value!r}"


HEALTH = {
    "status": str,
    "version": str,
    "nodes_healthy": int,
    "nodes_total": int,
    "nodes": [
        {"name": str, "healthy": bool, "state": str, "last_error": OPT_STR, "version": OPT_STR}
    ],
}
SUMMARY = {"mean": OPT_NUM, "p50": OPT_NUM, "p95": OPT_NUM}
LEARNED_MODEL = {
    "decode_tokens_per_s": NUM,
    "prefill_tokens_per_s": NUM,
    "load_s": NUM,
    "ttft_s": NUM,
    "service_s": NUM,
    "samples": int,
}
PROMPT_CACHE_SCORE = {
    "requests": int,
    "predicted_hit_ratio": NUM,
    "observed_hit_ratio": NUM,
    "agreement": NUM,
    "prompt_tokens": int,
    "predicted_cached_tokens": int,
    "observed_cached_tokens": int,
    "predicted_cached_ratio": NUM,
    "observed_cached_ratio": NUM,
}
STATS = {
    "time": NUM,
    "since": NUM,
    "requests": int,
    "nodes": {
        "*": {
            "requests": int,
            "errors": int,
            "learned": {
                "success_rate": NUM,
                "decode_tokens_per_s": NUM,
                "prefill_tokens_per_s": NUM,
            },
            "models": {
                "*": {
                    "requests": int,
                    "errors": int,
                    "midstream_failures": int,
                    "cache_affinity_hits": int,
                    "tokens_in": int,
                    "tokens_out": int,
                    "latency_s": SUMMARY,
                    "ttft_s": SUMMARY,
                    "learned": (dict, type(None)),
                }
            },
        }
    },
    "routing": {"by_strategy": {"*": {"*": int}}, "by_task": {"*": {"*": int}}},
    # Predicted against observed prompt-cache hits, fleet-wide and per node and model.
    "prompt_cache": {
        **PROMPT_CACHE_SCORE,
        "nodes": {"*": {"*": PROMPT_CACHE_SCORE}},
        "warmups": {"sent": int, "done": int, "failed": int, "tokens": int},
    },
    # The priority queue per priority, as GET /sollol/queue reports it.
    "queue_by_priority": {
        "*": {
            "waiting": int,
            "oldest_wait_s": NUM,
            "admitted": int,
            "queued": int,
            "wait_p50_s": OPT_NUM,
            "wait_p95_s": OPT_NUM,
            "timed_out": int,
            "rejected": int,
            "shed": int,
            "left": int,
        }
    },
}
BATCH_JOB = {
    "id": str,
    "model": str,
    "status": str,
    "created": NUM,
    "started": OPT_NUM,
    "finished": OPT_NUM,
    "total": int,
    "done": int,
    "failed": int,
    "pending": int,
    "progress": NUM,
    "docs_per_s": OPT_NUM,
    "eta_s": OPT_NUM,
    "error": OPT_STR,
    "waiting": OPT_STR,
    "results_url": str,
}
DASHBOARD = {
    "time": NUM,
    "proxy": {"version": str, "uptime_s": NUM, "requests": int, "in_flight": int},
    "nodes": [
        {
            "name": str,
            "url": str,
            "healthy": bool,
            "state": str,
            "last_error": OPT_STR,
            "version": OPT_STR,
            "in_flight": int,
            "slots_per_model": int,
            "slots_source": str,
            "loaded": [{"model": str, "in_flight": int, "slots": int, "slots_source": str}],
            "loading": [str],
            "models_available": int,
            "decode_tokens_per_s": NUM,
            "prefill_tokens_per_s": NUM,
            "success_rate": NUM,
            "requests": int,
            "errors": int,
            "latency_p50_s": OPT_NUM,
            "latency_p95_s": OPT_NUM,
        }
    ],
    "decisions": [
        {
            "request_id": str,
            "time": NUM,
            "model": str,
            "task": str,
            "priority": int,
            "strategy": str,
            "node": OPT_STR,
            "served_by": OPT_STR,
            "category": str,
            "reason": str,
            "candidates": int,
        }
    ],
    "alerts": [{"severity": str, "kind": str, "node": str, "message": str}],
    "queue": {
        "enabled": bool,
        "waiting": int,
        "oldest_wait_s": OPT_NUM,
        "by_priority": {"*": int},
        "wait_p95_s": {"*": OPT_NUM},
        "turned_away": int,
        "next": [{"model": str, "priority": int, "effective_priority": NUM, "waited_s": NUM}],
    },
    "batches": [BATCH_JOB],
}


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        assert response.headers["Content-Type"] == "application/json"
        return response.status, orjson.loads(await response.read())


async def chat(http: aiohttp.ClientSession, url: str, text: str, **extra: Any) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": text}], **extra}
    async with http.post(url + "/api/chat", data=orjson.dumps({"stream": False, **body})) as r:
        assert r.status == 200
        await r.read()


def test_the_proxys_paths_are_not_ollamas() -> None:
    for path in ("/api/health", "/api/stats", "/api/dashboard", "/metrics", "/dashboard"):
        assert classify("GET", path)[0].kind is Kind.SOLLOL
    assert classify("GET", "/api/tags")[0].kind is Kind.TAGS
    assert classify("GET", "/api/healthz")[0].kind is Kind.ANY  # anything else: a node answers


async def test_health_reports_proxy_and_nodes(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]), dict(name="b", models=[MODEL]))
    status, body = await get(http, made.url + "/sollol/health")
    check(body, HEALTH)
    assert status == 200 and body["status"] == "ok"
    assert (body["nodes_healthy"], body["nodes_total"]) == (2, 2)
    assert [n["name"] for n in body["nodes"]] == ["a", "b"]
    assert body["nodes"][0]["version"] == "0.33.0-rc2"

    made.node("b").faults.refuse = True
    await eventually(lambda: not made.fleet.nodes["b"].healthy)
    status, body = await get(http, made.url + "/api/health")  # the seed's path
    assert status == 200 and body["status"] == "degraded" and body["nodes_healthy"] == 1
    assert body["nodes"][1]["healthy"] is False and body["nodes"][1]["last_error"]

    made.node("a").faults.refuse = True
    await eventually(lambda: not made.fleet.nodes["a"].healthy)
    status, body = await get(http, made.url + "/sollol/health")
    assert status == 503 and body["status"] == "down"  # a load balancer stops sending traffic


async def test_stats_count_per_node_and_model_with_routing_by_task(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]))
    conversation = [{"role": "system", "content": SYSTEM}]
    for turn in range(3):
        conversation.append({"role": "user", "content": f"Summarize this text: part {turn}"})
        body = {"model": "llama3.2", "messages": conversation, "stream": False}
        async with http.post(made.url + "/api/chat", data=orjson.dumps(body)) as r:
            answer = orjson.loads(await r.read())
        conversation.append(answer["message"])
    await chat(http, made.url, "Write a python function that adds two numbers", stream=True)

    status, stats = await get(http, made.url + "/sollol/stats")
    check(stats, STATS)
    assert status == 200 and stats["requests"] == 4
    pair = stats["nodes"]["a"]["models"][MODEL]
    assert (pair["requests"], pair["errors"], pair["midstream_failures"]) == (4, 0, 0)
    # Turns 2 and 3 went where the conversation's prompt was cached.
    assert pair["cache_affinity_hits"] == 2
    assert pair["tokens_in"] > 0 and pair["tokens_out"] > 0
    assert 0 < pair["latency_s"]["p50"] <= pair["latency_s"]["p95"]
    assert pair["ttft_s"]["p50"] is not None  # the one streamed answer
    assert pair["learned"]["samples"] == 4
    assert stats["routing"]["by_task"] == {
        "summarization": {"cold_load": 1, "cache_affinity": 2},
        "code": {"resident": 1},
    }
    assert stats["routing"]["by_strategy"] == {
        "performance": {"cold_load": 1, "cache_affinity": 2, "resident": 1}
    }
    assert (await get(http, made.url + "/api/stats"))[1]["nodes"] == stats["nodes"]
    # Four requests at the default priority, each admitted at once.
    assert stats["queue_by_priority"]["5"]["admitted"] == 4
    assert stats["queue_by_priority"]["5"]["queued"] == 0


async def test_dashboard_json_shows_nodes_decisions_and_alerts(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL], num_parallel=2), dict(name="b", models=[MODEL])
    )
    await chat(http, made.url, "hello")
    await chat(http, made.url, "hello again")
    status, body = await get(http, made.url + "/sollol/dashboard")
    check(body, DASHBOARD)
    assert status == 200
    assert body["queue"]["by_priority"] == {"5": 0} and body["queue"]["waiting"] == 0
    assert body["proxy"]["requests"] == 2 and body["alerts"] == []
    nodes = {n["name"]: n for n in body["nodes"]}
    assert nodes["a"]["slots_per_model"] == 2 and nodes["b"]["healthy"]
    served = [d["served_by"] for d in body["decisions"]]
    assert len(served) == 2
    assert sum(nodes[n]["requests"] for n in nodes) == 2
    assert all(
        n["loaded"]
        == [
            {
                "model": MODEL,
                "in_flight": 0,
                "slots": n["slots_per_model"],
                "slots_source": "configured",
            }
        ]
        for n in nodes.values()
        if n["requests"]
    )
    latest = body["decisions"][0]
    assert latest["strategy"] == "performance" and latest["candidates"] == 2
    assert latest["category"] in ("resident", "cold_load") and latest["reason"]

    made.node("b").faults.refuse = True
    await eventually(lambda: not made.fleet.nodes["b"].healthy)
    body = (await get(http, made.url + "/api/dashboard"))[1]
    check(body, DASHBOARD)
    down = [a for a in body["alerts"] if a["kind"] == "down"]
    assert [(a["severity"], a["node"]) for a in down] == [("critical", "b")]


async def test_slow_node_alert(cluster: ClusterFactory, http: aiohttp.ClientSession) -> None:
    made = await cluster(
        dict(name="fast", models=[MODEL], token_delay=0.002, deterministic=False),
        dict(name="slow", models=[MODEL], token_delay=0.03, deterministic=False),
        routing__strategy="round_robin",
    )
    for _ in range(4):
        await chat(http, made.url, "x", options={"num_predict": 20})
    body = (await get(http, made.url + "/sollol/dashboard"))[1]
    slow = [a for a in body["alerts"] if a["kind"] == "slow"]
    assert [(a["severity"], a["node"]) for a in slow] == [("warning", "slow")]
    assert MODEL in slow[0]["message"]


async def test_dashboard_page_is_self_contained(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]))
    async with http.get(made.url + "/dashboard") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        page = (await response.read()).decode()
    assert "/sollol/dashboard" in page
    # No CDN, no external fetch of any kind: it must work on a closed network. The SVG namespace
    # is a name that createElementNS needs, never fetched.
    page = page.replace('"http://www.w3.org/2000/svg"', "SVG_NS")
    assert "http://" not in page and "https://" not in page and "//cdn" not in page


async def test_error_rate_alert_after_failed_attempts(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL]),
        dict(name="b", models=[MODEL]),
        routing__strategy="least_loaded",
    )
    made.node("a").faults.refuse = True
    made.fleet.nodes["b"].model_in_flight[MODEL] = 1  # ranks the refusing node first
    try:
        await chat(http, made.url, "x")
    finally:
        del made.fleet.nodes["b"].model_in_flight[MODEL]
    made.node("a").faults.refuse = False
    await eventually(lambda: made.fleet.nodes["a"].healthy)
    alerts = (await get(http, made.url + "/sollol/dashboard"))[1]["alerts"]
    assert [(a["severity"], a["kind"], a["node"]) for a in alerts] == [("warning", "errors", "a")]
    assert "success rate" in alerts[0]["message"]


async def node_states(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    nodes = (await get(http, url + "/sollol/nodes"))[1]["nodes"]
    return {n["name"]: n["health"]["state"] for n in nodes}


async def test_reading_the_dashboard_does_not_end_ejections_when_every_node_is_ejected(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # Guards: the dashboard's slow-node check must not trigger panic mode (ejected -> half_open).
    made = await cluster(
        dict(name="a", models=[MODEL]),
        dict(name="b", models=[MODEL]),
        outlier__base_ejection="60s",
        outlier__max_ejection="60s",
    )
    for node in made.nodes:
        node.faults.status_error = (500, "an error was encountered while running the model")
    body = orjson.dumps({"model": MODEL, "prompt": "x", "stream": False})
    for _ in range(3):  # each request fails on both nodes: three failures in a row eject them
        async with http.post(made.url + "/api/generate", data=body) as response:
            assert response.status == 500
    assert await node_states(http, made.url) == {"a": "ejected", "b": "ejected"}
    for _ in range(3):
        dashboard = (await get(http, made.url + "/sollol/dashboard"))[1]
        assert {a["node"] for a in dashboard["alerts"] if a["kind"] == "ejected"} == {"a", "b"}
    assert await node_states(http, made.url) == {"a": "ejected", "b": "ejected"}
    assert all(n.health.state == "ejected" for n in made.fleet.nodes.values())


async def test_dashboard_turned_away_counts_a_priority_whose_requests_were_all_rejected(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # Guards: turned_away sums every priority, not only those with an admitted request.
    made = await cluster(dict(name="a", models=[MODEL], token_delay=0.02), queue__max_length=0)
    long = orjson.dumps({"model": MODEL, "prompt": "x", "options": {"num_predict": 500}})
    async with http.post(made.url + "/api/generate", data=long) as holder:
        await holder.content.readline()  # the only slot is taken (priority 5)
        for _ in range(2):  # nothing may wait: answered 503 at once
            async with http.post(
                made.url + "/api/generate", data=long, headers={"X-Sollol-Priority": "2"}
            ) as response:
                assert response.status == 503 and "max_length 0" in await response.text()
        queue = (await get(http, made.url + "/sollol/dashboard"))[1]["queue"]
    assert queue["turned_away"] == 2
    assert queue["by_priority"] == {"5": 0, "2": 0}


async def test_dashboard_alerts_for_a_busy_and_a_half_open_node(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # Guards: the busy and half_open states each raise a warning alert naming the node.
    made = await cluster(
        dict(name="a", models=[MODEL]),
        dict(name="b", models=[MODEL]),
        dict(name="c", models=[MODEL]),
        routing__strategy="round_robin",
        outlier__busy_cooldown="60s",
        outlier__consecutive_failures=1,
        outlier__base_ejection="0.3s",
    )
    made.node("a").faults.status_error = (
        503,
        "server busy, please try again.  maximum pending requests exceeded",
    )
    made.node("b").faults.status_error = (500, "an error was encountered while running the model")
    for _ in range(2):  # round robin: a first, then b first; c serves both
        await chat(http, made.url, "x")
    assert made.fleet.nodes["a"].health.current() == "busy"
    await eventually(lambda: made.fleet.nodes["b"].health.current() == "half_open")
    alerts = (await get(http, made.url + "/sollol/dashboard"))[1]["alerts"]
    by_kind = {a["kind"]: a for a in alerts if a["kind"] in ("busy", "half_open")}
    assert {k: (a["severity"], a["node"]) for k, a in by_kind.items()} == {
        "busy": ("warning", "a"),
        "half_open": ("warning", "b"),
    }
    assert by_kind["busy"]["message"].startswith("a is busy: busy (503)")
    assert by_kind["half_open"]["message"].startswith("b is half_open: ")
