"""Small embedding calls that wait for a slot together go to the node as one call, and each
caller gets the answer its own call would have got (vectors byte for byte)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from tests.conftest import Cluster, ClusterFactory, eventually

MODEL = "all-minilm"


async def _node(cluster: ClusterFactory, **settings: Any) -> Cluster:
    return await cluster(
        dict(name="a", models=[MODEL], prompt_tokens_per_s=4000.0, deterministic=True),
        embed__coalesce=True,
        **settings,
    )


async def _post(http: aiohttp.ClientSession, url: str, payload: Any) -> tuple[int, bytes]:
    async with http.post(url + "/api/embed", data=orjson.dumps(payload)) as response:
        return response.status, await response.read()


async def _hold_the_slot(c: Cluster, http: aiohttp.ClientSession) -> asyncio.Task[Any]:
    """Calls that keep the node busy for about a second: one in its one slot, one waiting
    inside Ollama behind it (all the proxy sends an embedding model), so later ones wait in
    the proxy."""
    busy = asyncio.gather(
        *(_post(http, c.url, {"model": MODEL, "input": f"{k} " + "x " * 4000}) for k in range(2))
    )
    await eventually(lambda: c.nodes[0].in_flight() == 2)
    return busy


def _embed_requests(c: Cluster) -> list[Any]:
    return [orjson.loads(r.body)["input"] for r in c.nodes[0].requests if r.path == "/api/embed"]


async def test_waiting_calls_share_one_upstream_call(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _node(cluster)
    busy = await _hold_the_slot(c, http)
    calls = [
        {"model": MODEL, "input": [f"call {k} text {i}" for i in range(k + 1)]} for k in range(5)
    ]
    answers = await asyncio.gather(*(_post(http, c.url, call) for call in calls))
    await busy
    sent = _embed_requests(c)[2:]
    # one batch per place the node has (its slot and one behind it), shared by the five
    assert len(sent) == 2
    assert sorted(sent[0] + sent[1]) == sorted(t for call in calls for t in call["input"])
    direct = [await _post(http, c.nodes[0].url, call) for call in calls]
    for (status, body), (_, alone) in zip(answers, direct, strict=True):
        mine, theirs = orjson.loads(body), orjson.loads(alone)
        assert status == 200
        assert list(mine) == list(theirs)  # model, embeddings, total_duration, load_duration, ...
        assert mine["embeddings"] == theirs["embeddings"]
        vectors = body[body.index(b'"embeddings":') : body.index(b',"total_duration"')]
        assert vectors == alone[alone.index(b'"embeddings":') : alone.index(b',"total_duration"')]
    counts = [orjson.loads(body)["prompt_eval_count"] for _, body in answers]
    assert sum(counts) == sum(orjson.loads(alone)["prompt_eval_count"] for _, alone in direct)


async def test_a_call_that_need_not_wait_goes_alone_and_untouched(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _node(cluster)
    raw = b'{"model":"all-minilm","input":["alone"] }'
    async with http.post(c.url + "/api/embed", data=raw) as response:
        assert response.status == 200
        body = await response.read()
    node = c.nodes[0]
    assert [r for r in node.requests if r.path == "/api/embed"][-1].body == raw
    assert body == [r for r in node.responses if r.path == "/api/embed"][-1].body


async def test_a_call_that_waits_alone_gets_the_nodes_own_answer(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _node(cluster)
    busy = await _hold_the_slot(c, http)
    raw = b'{"model":"all-minilm", "input":["waited", "alone"]}'
    async with http.post(c.url + "/api/embed", data=raw) as response:
        assert response.status == 200
        body = await response.read()
    await busy
    node = c.nodes[0]
    embeds = [r for r in node.requests if r.path == "/api/embed"]
    assert embeds[-1].body == raw  # nobody joined: the client's own bytes
    assert body == [r for r in node.responses if r.path == "/api/embed"][-1].body


async def test_a_refused_batch_is_sent_again_call_by_call(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _node(cluster)
    busy = await _hold_the_slot(c, http)
    good = [{"model": MODEL, "input": [f"fine {i}"], "truncate": False} for i in range(3)]
    bad = {"model": MODEL, "input": ["word " * 3000], "truncate": False}  # over the context
    answers = await asyncio.gather(*(_post(http, c.url, call) for call in [*good, bad]))
    await busy
    assert [status for status, _ in answers] == [200, 200, 200, 400]
    assert answers[3][1] == b'{"error":"the input length exceeds the context length"}'
    sent = _embed_requests(c)[2:]
    refused = next(batch for batch in sent if len(batch) > 1 and bad["input"][0] in batch)
    alone = [batch for batch in sent if len(batch) == 1]
    assert sorted(t for batch in alone for t in batch) == sorted(refused)  # each sent again


async def test_when_the_first_caller_leaves_another_one_waits_for_the_batch(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _node(cluster)
    busy = await _hold_the_slot(c, http)
    leaver = asyncio.create_task(_post(http, c.url, {"model": MODEL, "input": ["first"]}))
    await asyncio.sleep(0.05)
    stayers = [
        asyncio.create_task(_post(http, c.url, {"model": MODEL, "input": [f"later {i}"]}))
        for i in range(3)
    ]
    await asyncio.sleep(0.05)
    leaver.cancel()
    answers = await asyncio.gather(*stayers)
    await busy
    assert [status for status, _ in answers] == [200, 200, 200]
    sent = [t for batch in _embed_requests(c)[2:] for t in batch]
    assert sorted(sent) == ["later 0", "later 1", "later 2"]  # the leaver's input never went
