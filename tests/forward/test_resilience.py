"""Failures: before the first byte the proxy fails over; after it, the client is told in-stream."""

from __future__ import annotations

import asyncio

import aiohttp
import ollama
import orjson
import pytest

from tests.conftest import ClusterFactory, eventually

CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"tell me"}],"options":{"num_predict":8}}'


@pytest.mark.parametrize("fault", ["refuse", "reset_before_headers"])
async def test_failover_before_the_first_byte(
    cluster: ClusterFactory, http: aiohttp.ClientSession, fault: str
) -> None:
    # least_loaded, so that the test can put the broken node first by loading the other one.
    # The fault breaks the probes too: with the tests' 0.2 s probes one could land between two
    # requests and take `a` down before the third, so only the requests' failures count here.
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]),
        dict(name="b", models=["llama3.2:latest"]),
        routing__strategy="least_loaded",
        health__interval=60,
        inventory__interval=60,
    )
    setattr(made.node("a").faults, fault, True)
    for _ in range(3):
        # Pin the ranking so that the broken node comes first.
        made.fleet.nodes["a"].healthy = True
        made.fleet.nodes["b"].model_in_flight["llama3.2:latest"] = 1
        try:
            async with http.post(made.url + "/api/chat", data=CHAT) as response:
                body = await response.read()
        finally:
            del made.fleet.nodes["b"].model_in_flight["llama3.2:latest"]
        assert response.status == 200
        assert response.headers["X-Sollol-Node"] == "b"
        assert "(after a: " in response.headers["X-Sollol-Route"]
        assert orjson.loads(body.splitlines()[-1])["done"] is True
    # Three failures in a row: out of rotation (ejected, or down if the probes failed too).
    assert not made.fleet.nodes["a"].health.admits()


async def test_every_node_failing_is_a_502_naming_each(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]), dict(name="b", models=["llama3.2:latest"])
    )
    for node in made.nodes:
        node.faults.reset_before_headers = True
    async with http.post(made.url + "/api/chat", data=CHAT) as response:
        assert response.status == 502
        error = orjson.loads(await response.read())["error"]
    assert error.startswith("no Ollama node could answer (")
    assert "a: " in error and "b: " in error


async def test_first_byte_timeout_fails_over_and_reports_504_when_all_time_out(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]),
        dict(name="b", models=["llama3.2:latest"]),
        timeouts__first_byte=0.3,
    )
    for node in made.nodes:
        node.faults.first_byte_delay = 2.0
    async with http.post(made.url + "/api/chat", data=CHAT) as response:
        assert response.status == 504
        assert "no response within 0.3s" in orjson.loads(await response.read())["error"]
    await eventually(lambda: all(n.in_flight() == 0 for n in made.nodes))


async def test_busy_node_503_fails_over_to_another(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]),
        dict(name="b", models=["llama3.2:latest"]),
        routing__strategy="least_loaded",
    )
    busy = "server busy, please try again.  maximum pending requests exceeded"
    made.node("a").faults.status_error = (503, busy)
    made.fleet.nodes["b"].model_in_flight["llama3.2:latest"] = 1  # rank a first
    async with http.post(made.url + "/api/chat", data=CHAT) as response:
        assert response.status == 200 and response.headers["X-Sollol-Node"] == "b"
        assert "a: busy (503)" in response.headers["X-Sollol-Route"]
    del made.fleet.nodes["b"].model_in_flight["llama3.2:latest"]
    # With nowhere else to go, Ollama's own 503 reaches the client unchanged.
    made.node("b").faults.status_error = (503, busy)
    async with http.post(made.url + "/api/chat", data=CHAT) as response:
        assert response.status == 503
        assert await response.read() == b'{"error":"' + busy.encode() + b'"}'


async def test_mid_stream_failure_ends_ndjson_with_an_error_line(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    made.node("a").faults.reset_after_chunks = 3
    async with http.post(made.url + "/api/chat", data=CHAT) as response:
        assert response.status == 200
        body = await response.read()  # a clean end of the HTTP stream, with the error inside it
    lines = body.splitlines()
    assert len(lines) == 4
    assert all(orjson.loads(line)["done"] is False for line in lines[:3])
    error = orjson.loads(lines[3])["error"]
    assert error.startswith("sollol-proxy: node a failed mid-response (")


async def test_mid_stream_failure_makes_the_ollama_client_raise(cluster: ClusterFactory) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    made.node("a").faults.reset_after_chunks = 2
    client = ollama.AsyncClient(host=made.url)
    received = []
    with pytest.raises(ollama.ResponseError, match="failed mid-response"):
        async for part in await client.chat(
            model="llama3.2", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            received.append(part)
    assert len(received) == 2


async def test_mid_stream_failure_on_sse_sends_an_error_event(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    made.node("a").faults.reset_after_chunks = 2
    body = b'{"model":"llama3.2","messages":[{"role":"user","content":"x"}],"stream":true}'
    async with http.post(made.url + "/v1/chat/completions", data=body) as response:
        data = await response.read()
    events = [e for e in data.split(b"\n\n") if e]
    assert len(events) == 3
    assert orjson.loads(events[-1].removeprefix(b"data: "))["error"]["type"] == "api_error"


async def test_ollamas_own_in_stream_error_passes_through_untouched(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    made.node("a").faults.mid_stream_error = (2, "an error was encountered while running the model")
    async with http.post(made.url + "/api/chat", data=CHAT) as response:
        body = await response.read()
    assert body.endswith(b'\n{"error":"an error was encountered while running the model"}\n')
    # The chat's own answer (a probe's may have been recorded after it).
    chats = [r for r in made.node("a").responses if r.path == "/api/chat"]
    assert body == chats[-1].body
    assert made.fleet.nodes["a"].healthy


async def test_client_disconnect_closes_the_upstream_and_frees_the_slot(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"], token_delay=0.1))
    node = made.node("a")
    body = b'{"model":"llama3.2","prompt":"long","options":{"num_predict":200}}'
    response = await http.post(made.url + "/api/generate", data=body)
    await response.content.readline()
    assert node.in_flight() == 1 and made.fleet.nodes["a"].in_flight == 1
    response.close()  # the client goes away mid-stream
    await eventually(lambda: node.cancelled == 1 and node.in_flight() == 0, within=3)
    await eventually(lambda: made.fleet.nodes["a"].in_flight == 0, within=3)
    # The slot is free: the next request is served at once instead of waiting 20 s.
    async with http.post(
        made.url + "/api/generate",
        data=b'{"model":"llama3.2","prompt":"x","options":{"num_predict":2}}',
    ) as r:
        assert r.status == 200 and (await asyncio.wait_for(r.read(), 3)).count(b"\n") == 3


async def test_client_disconnect_while_waiting_for_the_first_byte(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    node = made.node("a")
    node.faults.first_byte_delay = 5.0
    task = asyncio.create_task(http.post(made.url + "/api/chat", data=CHAT))
    await eventually(lambda: node.in_flight() == 1, within=3)
    task.cancel()
    await eventually(
        lambda: node.in_flight() == 0 and made.fleet.nodes["a"].in_flight == 0, within=3
    )


async def test_non_streamed_answers_may_take_longer_than_the_first_byte_timeout(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]), timeouts__first_byte=0.3)
    made.node("a").faults.first_byte_delay = 0.8
    body = b'{"model":"llama3.2","messages":[{"role":"user","content":"x"}],"stream":false}'
    async with http.post(made.url + "/api/chat", data=body) as response:
        assert response.status == 200
    assert len([r for r in made.node("a").requests if r.path == "/api/chat"]) == 1  # not replayed


async def test_slow_blob_upload_is_not_cut_by_the_first_byte_timeout(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    import hashlib

    made = await cluster(dict(name="a", models=[]), timeouts__first_byte=0.3)
    payload = b"y" * 40_000
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()

    async def slowly():  # type: ignore[no-untyped-def]
        for i in range(0, len(payload), 10_000):
            await asyncio.sleep(0.2)
            yield payload[i : i + 10_000]

    async with http.post(f"{made.url}/api/blobs/{digest}", data=slowly()) as response:
        assert response.status == 201


async def test_an_empty_pin_is_a_clear_400(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    for path, method in (("/api/chat", "POST"), ("/api/delete", "DELETE")):
        async with http.request(
            method, made.url + path, data=b'{"model":"llama3.2"}', headers={"X-Sollol-Node": " , "}
        ) as r:
            assert r.status == 400
            assert orjson.loads(await r.read()) == {"error": "X-Sollol-Node names no node"}


async def test_a_stream_that_goes_silent_ends_with_an_error_after_the_idle_timeout(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]), timeouts__idle_read=0.4)
    made.node("a").faults.stall_after_chunks = 2
    async with http.post(made.url + "/api/chat", data=CHAT) as response:
        body = await asyncio.wait_for(response.read(), 5)
    lines = body.splitlines()
    assert len(lines) == 3
    assert orjson.loads(lines[-1]) == {
        "error": "sollol-proxy: node a failed mid-response (idle for 0.4s); the response is incomplete"
    }
    await eventually(lambda: made.node("a").in_flight() == 0, within=3)  # the node was let go
    assert made.fleet.nodes["a"].healthy  # slow is not dead


async def test_a_sized_body_cut_by_the_node_is_cut_for_the_client_too(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    made.node("a").faults.truncate_body = 20
    async with http.post(made.url + "/api/show", data=b'{"model":"llama3.2"}') as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
