"""Speeds one replica measured are known to a replica that measured nothing of them yet."""

from __future__ import annotations

import aiohttp
import pytest

from sollol_proxy.app import LEARNER
from tests.shared.conftest import ReplicasFactory, until

MODEL = "llama3.2:latest"


async def test_a_replica_without_measurements_takes_the_others(
    replicas: ReplicasFactory,
) -> None:
    made = await replicas(2, dict(name="a", models=["llama3.2"], num_parallel=2, token_delay=0.02))
    learners = [made.proxies[i].runner.app[LEARNER] for i in range(2)]
    prior = learners[1].decode_tps("a", MODEL)
    async with aiohttp.ClientSession() as http:
        for i in range(3):  # through replica 0 only
            async with http.post(
                made.urls[0] + "/api/generate",
                json={"model": "llama3.2", "prompt": f"p{i}", "options": {"num_predict": 12}},
            ) as response:
                assert response.status == 200
                await response.read()
    measured = learners[0].measured()[("a", MODEL)]["decode_tps"]
    assert prior != pytest.approx(measured, rel=0.3), (prior, measured)
    await until(lambda: made.shared(1).learning.adopted > 0, within=6)
    assert learners[1].decode_tps("a", MODEL) == pytest.approx(measured)
    # Taken from the other, not measured: replica 1 does not pass it on as its own.
    assert "decode_tps" not in learners[1].measured().get(("a", MODEL), {})
