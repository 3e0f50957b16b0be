"""The prompt-cache map is shared: a prompt one replica left on a node is found there through
another replica."""

from __future__ import annotations

import aiohttp
import orjson

from tests.shared.conftest import ReplicasFactory, until

MODEL = "llama3.2:latest"
SYSTEM = "You are the support assistant of the platform team; answer from the runbook. " * 150
OTHER = "Answer briefly, politely and in the user's language. " * 20  # measured prefill
NODE = dict(models=[MODEL], deterministic=False, prompt_tokens_per_s=4000, token_delay=0.01)


async def chat(
    http: aiohttp.ClientSession,
    url: str,
    question: str,
    pin: str | None = None,
    system: str = SYSTEM,
) -> str:
    body = orjson.dumps(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            "stream": False,
            "options": {"num_predict": 5},
        }
    )
    headers = {"X-Sollol-Node": pin} if pin else {}
    async with http.post(url + "/api/chat", data=body, headers=headers) as response:
        text = await response.read()
        assert response.status == 200, text
        return response.headers["X-Sollol-Node"]


async def test_a_prompt_left_by_one_replica_is_found_through_another(
    replicas: ReplicasFactory,
) -> None:
    made = await replicas(2, dict(NODE, name="a"), dict(NODE, name="b"), dict(NODE, name="c"))
    c = made.nodes[2].url.removeprefix("http://")  # given as URLs: named host:port
    async with aiohttp.ClientSession() as http:
        # Every node loaded and measured by replica 1 (pinned, another prompt): it has no reason
        # of its own to prefer one.
        for node in made.nodes:
            name = node.url.removeprefix("http://")
            assert await chat(http, made.urls[1], "warm up", name, system=OTHER) == name
        # Through replica 0, pinned to c: a node neither replica would pick first by itself.
        assert await chat(http, made.urls[0], "first user: how do I rotate the keys?", c) == c
        await until(lambda: made.shared(1).prompt_cache.replayed >= 1)
        node = await chat(http, made.urls[1], "second user: where are the backups?")
    assert node == c
    uses = made.nodes[2].slot_uses
    assert len(uses) == 3 and uses[2].cached_tokens > 2500
