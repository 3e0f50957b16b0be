"""The official client libraries, pointed at the proxy, work as if it were one Ollama."""

from __future__ import annotations

import hashlib

import ollama
import openai
import pytest

from tests.conftest import ClusterFactory


@pytest.fixture
async def fleet(cluster: ClusterFactory):  # type: ignore[no-untyped-def]
    return await cluster(
        dict(name="a", models=["llama3.2:latest", "all-minilm:latest"], num_parallel=2),
        dict(name="b", models=["llama3.2:latest", "qwen2.5:7b"]),
        deterministic=False,
    )


async def test_ollama_python_client_end_to_end(fleet) -> None:  # type: ignore[no-untyped-def]
    client = ollama.AsyncClient(host=fleet.url)

    listed = await client.list()
    assert {m.model for m in listed.models} == {
        "llama3.2:latest",
        "all-minilm:latest",
        "qwen2.5:7b",
    }

    reply = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert reply.done and reply.message.role == "assistant" and reply.message.content
    assert reply.eval_count and reply.total_duration

    parts = [
        p
        async for p in await client.chat(
            model="qwen2.5:7b", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    ]
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts)

    generated = await client.generate(model="llama3.2", prompt="Why is the sky blue?")
    assert generated.done and generated.response and generated.context
    chunks = [
        c
        async for c in await client.generate(
            model="llama3.2", prompt="x", stream=True, options={"num_predict": 4}
        )
    ]
    assert len(chunks) == 5 and chunks[-1].done_reason == "length"

    embedded = await client.embed(model="all-minilm", input=["a", "b"])
    assert len(embedded.embeddings) == 2
    legacy = await client.embeddings(model="all-minilm", prompt="a")
    assert legacy.embedding

    shown = await client.show("llama3.2")
    assert shown.modelinfo is not None and shown.details.family

    await client.generate(model="qwen2.5:7b", prompt="", keep_alive=-1)  # preload
    running = await client.ps()
    assert "qwen2.5:7b" in {m.name for m in running.models}

    with pytest.raises(ollama.ResponseError) as missing:
        await client.chat(model="ghost", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404 and missing.value.error == "model 'ghost' not found"


async def test_ollama_python_client_manages_models(fleet) -> None:  # type: ignore[no-untyped-def]
    client = ollama.AsyncClient(host=fleet.url)

    progress = [p async for p in await client.pull("mistral", stream=True)]
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert all(node.has_model("mistral:latest") for node in fleet.nodes)
    assert (await client.pull("nomic-embed-text")).status == "success"
    await client.embed(model="nomic-embed-text", input="usable right away")

    assert (await client.copy("mistral", "mistral-backup")).status == "success"
    await client.generate(model="mistral-backup", prompt="x")
    assert (await client.delete("mistral")).status == "success"
    assert not any(node.has_model("mistral:latest") for node in fleet.nodes)
    with pytest.raises(ollama.ResponseError) as gone:
        await client.show("mistral")
    assert gone.value.status_code == 404

    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        await client.pull("no-such-model")

    blob = b"GGUF" + b"\1" * 1024
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    assert await client.create_blob(_write(blob)) == digest
    created = await client.create(model="mine", files={"model.gguf": digest})
    assert created.status == "success"
    assert (await client.show("mine")).details is not None


def _write(data: bytes) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile(delete=False, suffix=".gguf") as handle:
        handle.write(data)
        return handle.name


async def test_ollama_sync_client_streams_through_the_proxy(fleet) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    def run() -> list[str]:
        client = ollama.Client(host=fleet.url)
        return [
            p.message.content
            for p in client.chat(
                model="llama3.2", messages=[{"role": "user", "content": "x"}], stream=True
            )
        ]

    assert len(await asyncio.to_thread(run)) > 1


async def test_openai_sdk_on_v1(fleet) -> None:  # type: ignore[no-untyped-def]
    client = openai.AsyncOpenAI(base_url=fleet.url + "/v1", api_key="ollama", max_retries=0)
    completion = await client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "stop"

    stream = await client.chat.completions.create(
        model="qwen2.5:7b",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    models = await client.models.list()
    assert {m.id for m in models.data} == {"llama3.2:latest", "all-minilm:latest", "qwen2.5:7b"}
    assert (await client.models.retrieve("qwen2.5:7b")).id == "qwen2.5:7b"
    embedding = await client.embeddings.create(model="all-minilm", input="x")
    assert embedding.data[0].embedding

    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="ghost", messages=[{"role": "user", "content": "x"}]
        )
