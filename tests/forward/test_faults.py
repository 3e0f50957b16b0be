"""Fault injection over real sockets: what the client sees when nodes misbehave.

Every case checks four things: what the client gets (status, body, how the stream ends), that
no request that could be retried was lost, that in-flight counts go back to zero on the proxy
and on the nodes, and that the node is used again once it recovers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import ollama
import orjson
import pytest

from sollol_proxy.admission.admission import Admission
from sollol_proxy.app import ADMISSION, apply_config
from sollol_proxy.config import load_config
from tests.conftest import TEST_SETTINGS, Cluster, ClusterFactory, eventually

CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"tell me"}],"options":{"num_predict":8}}'
QUIET_CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"x"}],"stream":false}'
MODEL = "llama3.2:latest"
BUSY = "server busy, please try again.  maximum pending requests exceeded"
# Round robin puts every node first in turn, so each fault meets first attempts; short
# ejections so that recovery is seen within the test.
FAST = dict(
    routing__strategy="round_robin",
    outlier__base_ejection=0.5,
    outlier__max_ejection=2.0,
    outlier__busy_cooldown=0.5,
)


def two_nodes(**extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return dict(name="a", models=[MODEL], **extra), dict(name="b", models=[MODEL])


async def chat(http: aiohttp.ClientSession, made: Cluster, body: bytes = CHAT) -> tuple[Any, bytes]:
    async with http.post(made.url + "/api/chat", data=body) as response:
        return response, await asyncio.wait_for(response.read(), 10)


def done(body: bytes) -> bool:
    return orjson.loads(body.splitlines()[-1]).get("done") is True


def admission(made: Cluster) -> Admission:
    return made.proxy.runner.app[ADMISSION]


async def settled(made: Cluster) -> None:
    """Nothing in flight anywhere: the proxy's counts and slots, and the nodes' own."""
    await eventually(
        lambda: (
            all(
                n.in_flight == 0 and not n.model_in_flight and not n.loading and not n.evicting
                for n in made.fleet.nodes.values()
            )
            and all(node.in_flight() == 0 for node in made.nodes)
            and admission(made).slots.all_in_use() == {}
            and admission(made).waiting == 0
        ),
        within=10,
    )


async def served_again(
    http: aiohttp.ClientSession, made: Cluster, name: str, *, alone: bool = False
) -> None:
    """Requests keep succeeding until `name` answers one (its half-open trial, then more).
    `alone`: no other node could serve meanwhile, so "no node can take it" 503s are expected."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        response, body = await chat(http, made)
        if alone and response.status == 503:
            assert b"only on nodes that are down" in body
            await asyncio.sleep(0.1)
            continue
        assert response.status == 200 and done(body)
        if response.headers["X-Sollol-Node"] == name:
            break
        assert loop.time() < deadline, f"node {name} never served again"
        await asyncio.sleep(0.1)
    assert made.fleet.nodes[name].health.current() == "up"


def state(made: Cluster, name: str) -> str:
    return made.fleet.nodes[name].health.current().value


async def test_a_node_refusing_connections(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(*two_nodes(), **FAST)
    a = made.node("a")
    port = a.port
    await a.stop()  # nothing listens: connections are refused (ECONNREFUSED)
    for _ in range(4):
        response, body = await chat(http, made)
        assert response.status == 200 and response.headers["X-Sollol-Node"] == "b" and done(body)
    assert state(made, "a") == "down"  # one refused connection is enough
    nodes = {
        n["name"]: n for n in (await (await http.get(made.url + "/sollol/nodes")).json())["nodes"]
    }
    assert nodes["a"]["health"]["state"] == "down" and nodes["a"]["healthy"] is False
    await settled(made)
    await a.start(port=port)
    await served_again(http, made, "a")
    await settled(made)


async def test_a_node_that_accepts_and_resets(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(*two_nodes(), **FAST)
    made.node("a").faults.refuse = True
    for _ in range(4):
        response, body = await chat(http, made)
        assert response.status == 200 and response.headers["X-Sollol-Node"] == "b" and done(body)
    await eventually(lambda: not made.fleet.nodes["a"].health.admits())
    await settled(made)
    made.node("a").faults.refuse = False
    await served_again(http, made, "a")


async def test_a_node_killed_mid_stream(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL], token_delay=0.05), **FAST)
    a = made.node("a")
    port = a.port
    body = b'{"model":"llama3.2","messages":[{"role":"user","content":"x"}],"options":{"num_predict":200}}'
    async with http.post(made.url + "/api/chat", data=body) as response:
        assert response.status == 200
        first = await response.content.readline()
        await a.stop()  # the node dies while the answer streams
        rest = await asyncio.wait_for(response.read(), 10)  # a clean end, the error inside
    lines = (first + rest).splitlines()
    assert all(orjson.loads(line)["done"] is False for line in lines[:-1])
    error = orjson.loads(lines[-1])["error"]
    assert error.startswith("sollol-proxy: node a failed mid-response (")
    assert error.endswith("); the response is incomplete")
    health = made.fleet.nodes["a"].health
    assert health.counters.mid_stream_failures == 1
    await settled(made)
    await a.start(port=port)
    await eventually(lambda: made.fleet.nodes["a"].health.admits(), within=10)
    response, body = await chat(http, made)
    assert response.status == 200 and done(body)
    await settled(made)


async def test_a_node_that_hangs_before_the_first_byte(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        *two_nodes(),
        timeouts__first_byte=0.5,
        timeouts__non_streamed=0.8,
        outlier__consecutive_failures=2,
        **FAST,
    )
    made.node("a").faults.first_byte_delay = 30.0
    for body in (CHAT, QUIET_CHAT, CHAT, QUIET_CHAT):
        response, _ = await chat(http, made, body)
        assert response.status == 200 and response.headers["X-Sollol-Node"] == "b"
    routes = [r for r in made.node("a").requests if r.path == "/api/chat"]
    assert len(routes) == 2  # tried twice (once streamed, once not), then ejected
    assert state(made, "a") in ("ejected", "half_open")
    await settled(made)  # the hung requests were let go: the node saw the connections close
    assert made.node("a").cancelled == 2
    made.node("a").faults.first_byte_delay = 0
    await served_again(http, made, "a")


async def test_a_node_that_stalls_mid_stream(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL]),
        timeouts__idle_read=0.4,
        outlier__consecutive_failures=1,
        **FAST,
    )
    made.node("a").faults.stall_after_chunks = 2
    response, body = await chat(http, made)
    assert response.status == 200
    lines = body.splitlines()
    assert len(lines) == 3 and orjson.loads(lines[-1]) == {
        "error": "sollol-proxy: node a failed mid-response (idle for 0.4s); the response is incomplete"
    }
    assert state(made, "a") == "ejected"  # a hang is a failure ...
    assert made.fleet.nodes["a"].healthy  # ... but the node is reachable: its models stay listed
    await settled(made)
    made.node("a").faults.stall_after_chunks = None
    await served_again(http, made, "a", alone=True)
    await settled(made)


async def test_a_node_answering_500(cluster: ClusterFactory, http: aiohttp.ClientSession) -> None:
    made = await cluster(*two_nodes(), **FAST)
    made.node("a").faults.status_error = (500, "an error was encountered while running the model")
    routes = []
    for _ in range(8):
        response, body = await chat(http, made)
        assert response.status == 200 and response.headers["X-Sollol-Node"] == "b" and done(body)
        routes.append(response.headers["X-Sollol-Route"])
    assert sum("(after a: answered 500)" in r for r in routes) == 3  # then it was ejected
    tried = len([r for r in made.node("a").requests if r.path == "/api/chat"])
    assert tried == 3 + made.fleet.nodes["a"].health.counters.ejections - 1
    assert made.fleet.nodes["a"].health.counters.failovers == tried
    assert made.fleet.nodes["b"].health.counters.retries == tried
    await settled(made)
    made.node("a").faults.status_error = None
    await served_again(http, made, "a")


async def test_every_node_answering_500_passes_the_last_answer_through(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(*two_nodes(), **FAST)
    message = "an error was encountered while running the model"
    for node in made.nodes:
        node.faults.status_error = (500, message)
    response, body = await chat(http, made)
    assert response.status == 500  # Ollama's own answer, byte for byte, from the last node
    assert body == b'{"error":"' + message.encode() + b'"}'
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert "(after " in response.headers["X-Sollol-Route"]
    await settled(made)


async def test_a_500_caused_by_the_request_is_not_retried(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(*two_nodes(), **FAST)
    message = 'option \\"num_ctx\\" must be of type integer'
    for node in made.nodes:
        node.faults.status_error = (500, message.replace("\\", ""))
    response, _ = await chat(http, made)
    assert response.status == 500 and "X-Sollol-Route" in response.headers
    assert "(after" not in response.headers["X-Sollol-Route"]
    assert sum(len([r for r in n.requests if r.path == "/api/chat"]) for n in made.nodes) == 1
    assert all(made.fleet.nodes[n].health.consecutive == 0 for n in ("a", "b"))


async def test_a_busy_node(cluster: ClusterFactory, http: aiohttp.ClientSession) -> None:
    made = await cluster(*two_nodes(), **FAST)
    made.node("a").faults.status_error = (503, BUSY)
    response, _ = await chat(http, made)  # round robin: a first
    assert response.status == 200 and response.headers["X-Sollol-Node"] == "b"
    assert "a: busy (503)" in response.headers["X-Sollol-Route"]
    assert state(made, "a") == "busy"  # a short cool-down, not an ejection
    assert made.fleet.nodes["a"].health.counters.ejections == 0
    for _ in range(3):  # no new work for a while: not even tried
        response, _ = await chat(http, made)
        assert response.status == 200 and "(after" not in response.headers["X-Sollol-Route"]
    assert len([r for r in made.node("a").requests if r.path == "/api/chat"]) == 1
    await settled(made)
    made.node("a").faults.status_error = None
    await served_again(http, made, "a")


async def test_the_last_node_is_never_cooled_down_for_being_busy(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]), **FAST)
    made.node("a").faults.status_error = (503, BUSY)
    for _ in range(3):
        response, body = await chat(http, made)
        assert response.status == 503  # Ollama's own answer: clients retry on it
        assert body == b'{"error":"' + BUSY.encode() + b'"}'
        assert state(made, "a") == "up"
    made.node("a").faults.status_error = None
    response, body = await chat(http, made)
    assert response.status == 200 and done(body)
    await settled(made)


async def test_a_flapping_node(cluster: ClusterFactory, http: aiohttp.ClientSession) -> None:
    made = await cluster(*two_nodes(), **FAST)
    a, health = made.node("a"), made.fleet.nodes["a"].health
    outages = []
    for _ in range(3):
        a.faults.refuse = True  # the node drops out ...
        while health.admits():
            response, body = await chat(http, made)
            assert response.status == 200 and done(body)  # b took what a could not
        outages.append(health.until - health.clock())
        a.faults.refuse = False  # ... and comes back at once
        await served_again(http, made, "a")
    assert health.counters.ejections == 3 and health.streak == 3
    assert outages[0] < outages[1] < outages[2]  # each ejection in a row lasts longer
    await settled(made)


async def test_all_nodes_down(cluster: ClusterFactory, http: aiohttp.ClientSession) -> None:
    made = await cluster(*two_nodes(), **FAST)
    ports = {node.name: node.port for node in made.nodes}
    for node in made.nodes:
        await node.stop()
    response, body = await chat(http, made)
    assert response.status in (502, 503)
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    error = orjson.loads(body)["error"]
    assert "a: " in error and "b: " in error and "cannot connect" in error
    await eventually(lambda: not made.fleet.healthy())
    response, body = await chat(http, made)  # known down: answered at once, not tried
    assert response.status == 503
    assert orjson.loads(body)["error"].startswith(
        "model 'llama3.2:latest' is only on nodes that are down (a: cannot connect"
    )
    async with http.post(made.url + "/v1/chat/completions", data=QUIET_CHAT) as r:
        assert r.status == 503 and (await r.json())["error"]["type"] == "api_error"
    await settled(made)
    for node in made.nodes:
        await node.start(port=ports[node.name])
    await served_again(http, made, "a", alone=True)
    await served_again(http, made, "b")
    await settled(made)


async def test_a_model_deleted_behind_the_proxys_back(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # An interval longer than any machine's uptime: the monotonic clock counts from boot, so
    # this is the clock near zero that once kept a stale inventory from ever being re-read.
    made = await cluster(*two_nodes(), **FAST, inventory__interval=10**9)
    made.node("a").remove_model(MODEL)  # the inventory still lists it on a
    # Before the requests: the watcher may re-read the inventory while they are still going.
    corrected_at = time.monotonic()
    for _ in range(2):  # round robin: one of them goes to a first
        response, _ = await chat(http, made)
        assert response.status == 200 and response.headers["X-Sollol-Node"] == "b"
    assert MODEL not in made.fleet.nodes["a"].models  # that node's inventory was corrected
    assert state(made, "a") == "up"  # it answered: nothing wrong with the node itself
    # Marked out of date, then re-read by the watcher at its next probe.
    await eventually(lambda: (made.fleet.nodes["a"].inventory_at or 0.0) > corrected_at)
    assert MODEL not in made.fleet.nodes["a"].models
    await settled(made)


async def test_a_model_no_node_was_said_to_have_is_not_retried(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(*two_nodes(), **FAST)
    body = b'{"model":"nope","messages":[]}'
    response, answer = await chat(http, made, body)
    assert response.status == 404 and answer == b'{"error":"model \'nope\' not found"}'
    assert sum(len([r for r in n.requests if r.path == "/api/chat"]) for n in made.nodes) == 1


async def test_the_retry_budget_refuses_a_retry_storm(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(*two_nodes(), retries__budget_ratio=0, retries__min_concurrent=0, **FAST)
    made.node("a").faults.status_error = (500, "boom")
    statuses = []
    for _ in range(2):
        async with http.post(made.url + "/api/chat", data=CHAT) as response:
            statuses.append(response.status)
            if response.status != 200:
                error = orjson.loads(await response.read())["error"]
    assert sorted(statuses) == [200, 502]  # b served its own turn; a's 500 was not retried
    assert error == (
        "no Ollama node could answer (a: answered 500); "
        "not retried: retry budget spent (0 retries in progress, limit 0)"
    )
    assert len([r for r in made.node("b").requests if r.path == "/api/chat"]) == 1
    await settled(made)


async def test_retries_respect_max_attempts(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL]),
        dict(name="b", models=[MODEL]),
        dict(name="c", models=[MODEL]),
        routing__max_attempts=2,
        **FAST,
    )
    for node in made.nodes:
        node.faults.reset_before_headers = True
    response, body = await chat(http, made)
    assert response.status == 502
    assert orjson.loads(body)["error"].count("connection closed by node") == 2
    assert sum(len([r for r in n.requests if r.path == "/api/chat"]) for n in made.nodes) == 2
    await settled(made)


async def test_the_official_client_through_faults(cluster: ClusterFactory) -> None:
    made = await cluster(*two_nodes(), **FAST)
    a = made.node("a")
    port = a.port
    await a.stop()
    made.node("b").faults.status_error = (500, "an error was encountered while running the model")
    client = ollama.AsyncClient(host=made.url)
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(model="llama3.2", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code in (500, 502)
    made.node("b").faults.status_error = None
    parts = [
        part
        async for part in await client.chat(
            model="llama3.2", messages=[{"role": "user", "content": "x"}], stream=True
        )
    ]
    assert parts[-1].done
    await a.start(port=port)
    await eventually(lambda: made.fleet.nodes["a"].health.admits(), within=10)
    for _ in range(4):
        answer = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "x"}])
        assert answer.done
    await settled(made)


async def test_when_every_holder_is_ejected_a_recovered_one_is_tried_at_once(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL]),
        **{**FAST, "outlier__base_ejection": 60.0, "outlier__max_ejection": 60.0},
    )
    made.node("a").faults.status_error = (500, "an error was encountered while running the model")
    for _ in range(3):
        response, _ = await chat(http, made)
        assert response.status == 500  # the node's own answer: there is no other node
    assert state(made, "a") == "ejected"
    made.node("a").faults.status_error = None
    response, body = await chat(http, made)  # not refused for a minute: tried as a trial
    assert response.status == 200 and done(body) and state(made, "a") == "up"
    await settled(made)


async def test_a_route_with_its_own_first_byte_bound(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(*two_nodes(), timeouts__routes={"/api/embed": 0.4}, **FAST)
    made.node("a").faults.first_byte_delay = 30.0  # hangs: an embed there would wait 30 min
    for _ in range(2):
        async with http.post(
            made.url + "/api/embed", data=b'{"model":"llama3.2","input":"x"}'
        ) as response:
            assert response.status == 200 and response.headers["X-Sollol-Node"] == "b"
    assert made.fleet.nodes["a"].last_error == "no response within 0.4s"
    await settled(made)


async def test_a_node_that_became_available_meanwhile_takes_the_retry(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(*two_nodes(), timeouts__first_byte=1.5, **FAST)
    made.node("a").faults.first_byte_delay = 30.0
    made.fleet.nodes["b"].health.busy("queue full", others_available=True)  # out for 0.5 s
    response, body = await chat(http, made)  # ranked: a alone; a hangs; b is back by then
    assert response.status == 200 and done(body) and response.headers["X-Sollol-Node"] == "b"
    assert response.headers["X-Sollol-Route"] == (
        "next node that can take it now (after a: no response within 1.5s)"
    )
    await settled(made)


async def test_panic_every_reachable_node_takes_work_when_none_admits(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL], token_delay=0.05),
        **{**FAST, "outlier__base_ejection": 60.0, "outlier__max_ejection": 60.0},
    )
    made.node("a").faults.status_error = (500, "an error was encountered while running the model")
    for _ in range(3):
        assert (await chat(http, made))[0].status == 500
    assert state(made, "a") == "ejected"
    made.node("a").faults.status_error = None
    # The first takes the trial; the others are not refused while it runs: a still answers.
    answers = await asyncio.gather(*(chat(http, made) for _ in range(3)))
    assert [r.status for r, _ in answers] == [200, 200, 200] and all(done(b) for _, b in answers)
    await settled(made)


async def test_a_node_removed_by_a_reload_while_its_attempt_fails_still_fails_over(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # Guards: the failover after an attempt on a node the reload removed is no 500 (KeyError).
    made = await cluster(*two_nodes(), timeouts__first_byte=1.0, **FAST)
    made.node("a").faults.first_byte_delay = 30.0  # hangs; round robin tries a first
    pending = asyncio.create_task(chat(http, made))
    await eventually(lambda: made.node("a").in_flight() == 1)
    node_b = {"url": made.node("b").url, "name": "b"}
    overrides = {**TEST_SETTINGS, "routing.strategy": "round_robin", "timeouts.first_byte": 1.0}
    apply_config(
        made.proxy.runner.app, load_config(None, env={}, overrides={**overrides, "nodes": [node_b]})
    )
    assert list(made.fleet.nodes) == ["b"]
    response, body = await pending
    assert response.status == 200 and done(body), body
    assert response.headers["X-Sollol-Node"] == "b"
    assert response.headers["X-Sollol-Route"].endswith("(after a: no response within 1s)")
    await settled(made)
