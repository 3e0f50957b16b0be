"""`from sollol_proxy import connect`: an ollama.Client for the proxy with a priority per call
and batch jobs. The client is synchronous, so it runs in a thread beside the proxy's loop."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp
import ollama
import orjson
import pytest

import sollol_proxy.embed.client as client_module
from sollol_proxy import connect
from tests.conftest import Cluster, ClusterFactory

MODELS = ["llama3.2:latest", "all-minilm:latest"]


@pytest.fixture
async def fleet(cluster: ClusterFactory) -> Cluster:
    return await cluster(
        *(dict(name=n, models=MODELS, prompt_tokens_per_s=50000.0) for n in ("a", "b")),
        batch__min_batch=4,
        batch__max_batch=16,
    )


async def _priorities(http: aiohttp.ClientSession, url: str, count: int) -> list[int]:
    async with http.get(url + f"/sollol/decisions?limit={count}") as response:
        decisions = orjson.loads(await response.read())["decisions"]
    return [d["priority"] for d in reversed(decisions)]


async def test_every_ollama_call_works_with_a_priority_per_call(
    fleet: Cluster, http: aiohttp.ClientSession
) -> None:
    client = connect(fleet.url, priority="low")
    assert isinstance(client, ollama.Client)

    def calls() -> None:
        assert {m.model for m in client.list().models} == set(MODELS)
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        parts = list(
            client.chat(
                model="llama3.2",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                priority="high",
            )
        )
        assert parts[-1].done
        assert client.generate(model="llama3.2", prompt="x", priority=9).done
        assert len(client.embed(model="all-minilm", input=["a", "b"], priority=1).embeddings) == 2

    await asyncio.to_thread(calls)
    assert await _priorities(http, fleet.url, 4) == [2, 8, 9, 1]
    with pytest.raises(ollama.ResponseError) as refused:
        await asyncio.to_thread(client.generate, model="llama3.2", prompt="x", priority="urgent")
    assert refused.value.status_code == 400
    assert "invalid priority 'urgent'" in refused.value.error


async def test_batch_embed_yields_every_result_in_order(
    fleet: Cluster, http: aiohttp.ClientSession
) -> None:
    client = connect(fleet.url)
    docs = [{"id": f"d{i}", "text": f"document number {i}"} for i in range(150)]

    def run() -> list[dict[str, Any]]:
        return list(client.batch_embed(docs, model="all-minilm", poll=0.05))

    results = await asyncio.to_thread(run)
    assert [r["index"] for r in results] == list(range(150))
    assert [r["id"] for r in results] == [d["id"] for d in docs]
    async with http.post(
        fleet.nodes[0].url + "/api/embed",
        data=orjson.dumps({"model": "all-minilm", "input": [d["text"] for d in docs]}),
    ) as response:
        direct = orjson.loads(await response.read())["embeddings"]
    assert [r["embedding"] for r in results] == direct
    with pytest.raises(ollama.ResponseError) as refused:
        await asyncio.to_thread(lambda: list(client.batch_embed([], model="all-minilm")))
    assert refused.value.status_code == 400


def test_connect_without_the_ollama_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ollama", None)  # import ollama now raises ImportError
    client_module._client_class.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install 'sollol-proxy\[client\]'"):
            connect("localhost:1")
    finally:
        client_module._client_class.cache_clear()
