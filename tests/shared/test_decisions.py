"""/sollol/decisions shows the decisions of every replica, each saying which one made it."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from tests.shared.conftest import ReplicasFactory

MODEL = "llama3.2"


async def test_every_replica_shows_the_decisions_of_all(replicas: ReplicasFactory) -> None:
    made = await replicas(2, dict(name="a", models=[MODEL], num_parallel=2))
    everyone = {made.shared(0).link.replica, made.shared(1).link.replica}
    async with aiohttp.ClientSession() as http:
        for index, url in enumerate(made.urls):
            async with http.post(
                url + "/api/generate",
                json={"model": MODEL, "prompt": f"from {index}", "options": {"num_predict": 2}},
            ) as response:
                assert response.status == 200
                await response.read()
        seen: list[set[str]] = []
        for _ in range(50):  # pushed and read back once a second
            seen = []
            for url in made.urls:
                async with http.get(url + "/sollol/decisions") as response:
                    entries = orjson.loads(await response.read())["decisions"]
                seen.append({e.get("replica") for e in entries})
            if seen == [everyone, everyone]:
                break
            await asyncio.sleep(0.1)
    assert seen == [everyone, everyone]
