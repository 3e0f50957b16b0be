"""A node one replica ejects is avoided by every replica within one probe interval."""

from __future__ import annotations

import time

import aiohttp

from sollol_proxy.fleet.health import State
from tests.shared.conftest import ReplicasFactory, until

MODEL = "llama3.2"
INTERVAL = 1.0


async def test_an_ejection_by_one_replica_is_applied_by_all(replicas: ReplicasFactory) -> None:
    made = await replicas(
        3,
        dict(name="a", models=[MODEL], num_parallel=4),
        dict(name="b", models=[MODEL], num_parallel=4),
        health__interval=INTERVAL,
        outlier__consecutive_failures=1,
        outlier__base_ejection=30,
    )
    made.nodes[1].faults.status_error = (500, "an error was encountered while running the model")
    health = [made.fleet(i).nodes["b"].health for i in range(3)]
    async with aiohttp.ClientSession() as http:
        for i in range(50):
            async with http.post(
                made.urls[0] + "/api/generate",
                json={"model": MODEL, "prompt": f"p{i}", "options": {"num_predict": 2}},
                headers={"X-Sollol-Node": "b"},  # the operator pins it there: it fails
            ) as response:
                await response.read()
            if health[0].state is State.EJECTED:
                break
    assert health[0].state is State.EJECTED
    ejected_at = time.monotonic()
    await until(lambda: all(h.state is State.EJECTED for h in health), within=INTERVAL)
    took = time.monotonic() - ejected_at
    assert took < INTERVAL, took
    for index in (1, 2):
        assert "ejected by replica" in health[index].reason
        assert health[index].until - health[index].clock() > 20  # what is left of the 30 s
        # The other replicas never sent node b a request: they avoid it on replica 0's word.
        assert health[index].counters.failures == 0
    # Applied by the two others, not by the replica that ejected it.
    assert made.shared(1).health.applied == 1 and made.shared(0).health.applied == 0
