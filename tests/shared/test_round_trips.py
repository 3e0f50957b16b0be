"""What the shared path costs per request in Redis: at most one round trip on the way in (the
grant) and one on the way out (the release), counted by the replicas' own metrics and checked
against the scripts Redis itself ran (INFO commandstats)."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from tests.shared.conftest import Replicas, ReplicasFactory, idle
from tests.shared.test_slots import MODEL, generate, unknown_node


async def evalsha_calls(made: Replicas) -> int:
    stats = await made.shared(0).link.client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def metric(url: str, pattern: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        text = await response.text()
    found = re.search("^" + re.escape(pattern) + r" ([0-9.e+]+)$", text, re.M)
    assert found is not None, pattern
    return float(found.group(1))


async def test_one_trip_in_and_one_out_per_request_with_configured_slots(
    replicas: ReplicasFactory,
) -> None:
    # Two nodes of two configured slots, waves of four requests: below capacity, nobody waits.
    made = await replicas(
        1,
        dict(name="a", models=[MODEL], num_parallel=2, token_delay=0.01),
        dict(name="b", models=[MODEL], num_parallel=2, token_delay=0.01),
    )
    leases = made.shared(0).slots.leases
    await idle(made)
    scripts_before, trips_before = await evalsha_calls(made), leases.trips
    async with aiohttp.ClientSession() as http:
        for wave in range(6):
            await asyncio.gather(*(generate(http, made.urls[0], f"{wave}.{i}") for i in range(4)))
    await idle(made)
    requests = 24
    # One grant in and one release out per request, each a script Redis ran; pipelining
    # concurrent requests' operations together can only lower the round trips below that.
    assert leases.operations["grant"] == requests, leases.operations
    assert leases.operations["release"] == requests, leases.operations
    assert await evalsha_calls(made) - scripts_before >= 2 * requests
    assert leases.trips - trips_before <= 2 * requests
    assert leases.refused == 0
    url = made.urls[0]
    for name in ("grant", "release"):
        sent = await metric(url, f'sollol_shared_lease_operations_total{{operation="{name}"}}')
        assert sent == float(requests)
    trips = await metric(url, "sollol_shared_request_round_trips_total")
    assert trips == float(leases.trips)


async def test_learned_slots_cost_no_more_trips_than_configured_ones(
    replicas: ReplicasFactory,
) -> None:
    # Zero configuration (nodes given as URLs only), three replicas, requests one after another
    # round-robin: a replica's belief, when it changed, rides on its grant; the shared belief
    # comes back in the grant's answer. No trip of its own either way.
    made = await replicas(3, unknown_node("a", slots=2), unknown_node("b", slots=2))
    await idle(made)
    all_leases = [made.shared(i).slots.leases for i in range(3)]
    before = [lease.trips for lease in all_leases]
    requests = 18
    async with aiohttp.ClientSession() as http:
        for i in range(requests):
            await generate(http, made.urls[i % 3], f"request {i}")
    await idle(made)
    trips = sum(lease.trips for lease in all_leases) - sum(before)
    assert trips <= 2 * requests, trips
    assert sum(lease.operations["grant"] for lease in all_leases) == requests
    assert sum(lease.refused for lease in all_leases) == 0
