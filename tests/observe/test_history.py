"""/sollol/timeseries after real traffic: requests, TTFT, tokens, queue and node slots per bucket,
and a mark for each node state change."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from sollol_proxy.app import PROXY
from sollol_proxy.observe import history
from tests.conftest import ClusterFactory, eventually

MODEL = "llama3.2:latest"


@pytest.fixture(autouse=True)
def one_second_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bucket is charted once it is over: 1 s buckets keep the test short.
    monkeypatch.setattr(history, "BUCKET_S", 1.0)
    monkeypatch.setattr(history, "SAMPLE_S", 0.2)


async def chat(http: aiohttp.ClientSession, url: str, stream: bool = True) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with http.post(url + "/api/chat", data=orjson.dumps(body)) as response:
        assert response.status == 200
        await response.read()


async def series(http: aiohttp.ClientSession, url: str, window: int = 60) -> dict:
    async with http.get(url + f"/sollol/timeseries?window={window}") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        return orjson.loads(await response.read())


async def test_requests_latency_tokens_and_slots_are_charted(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]), dict(name="b", models=[MODEL]))
    for _ in range(3):
        await chat(http, made.url)

    # The bucket of the last request is charted once it is over.
    made_history = made.proxy.runner.app[PROXY].history
    assert made_history is not None
    await eventually(
        lambda: sum(v or 0 for v in made_history.to_json(60)["requests_per_s"]["ok"]) >= 3
    )
    # Every node is charted once sampled (once a second), whether or not it served a request.
    await eventually(lambda: len(made_history.to_json(60)["nodes"]) == 2)
    data = await series(http, made.url)
    assert data is not None
    assert data["bucket_s"] == 1
    assert sum(v or 0 for v in data["requests_per_s"]["ok"]) == pytest.approx(3)
    assert any(v is not None for v in data["ttft_s"]["p95"])
    assert sum(v or 0 for v in data["tokens_out_per_s"]) > 0
    assert [n["name"] for n in data["nodes"]] == ["a", "b"]
    for node in data["nodes"]:
        assert any(v is not None and v >= 1 for v in node["slots_believed"])
    assert all(len(v) == len(data["times"]) for v in data["requests_per_s"].values())


async def test_a_node_state_change_is_marked(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]), dict(name="b", models=[MODEL]))
    made.node("b").faults.refuse = True
    await eventually(lambda: not made.fleet.nodes["b"].healthy)
    kept = made.proxy.runner.app[PROXY].history
    assert kept is not None
    await eventually(lambda: bool(kept.to_json(60)["marks"]), within=3)  # once its bucket is over
    data = await series(http, made.url)
    assert {(m["node"], m["from"], m["to"]) for m in data["marks"]} >= {("b", "up", "down")}


@pytest.mark.parametrize("window", ["0", "3601", "abc", "٣", "9" * 5000, "-5"])
async def test_a_bad_window_is_a_400(
    cluster: ClusterFactory, http: aiohttp.ClientSession, window: str
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]))
    async with http.get(made.url + "/sollol/timeseries", params={"window": window}) as response:
        assert response.status == 400
        assert "window" in orjson.loads(await response.read())["error"]
