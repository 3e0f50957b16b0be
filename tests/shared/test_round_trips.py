"""What the shared path costs per request in Redis: at most one round trip on the way in (the
grant) and one on the way out (the release), counted by the replicas' own metrics and checked
against the scripts Redis itself ran (INFO commandstats)."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp

from sollol_proxy.shared.lease_ops import GRANTED, Ask
from tests.shared.conftest import Replicas, ReplicasFactory, idle, until
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
    # Each trip counted once by what it carried: first grants and releases only, none repeated
    # (and the write-back of the replica's start).
    assert sum(leases.trip_kinds.values()) == leases.trips
    expected = {"grant", "release", "write_back"}
    assert all(set(kind.split("+")) <= expected for kind in leases.trip_kinds), leases.trip_kinds
    carrying = 'sollol_shared_request_round_trips_by_kind_total{carrying="grant"}'
    assert await metric(url, carrying) == float(leases.trip_kinds["grant"])


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


async def test_a_grant_takes_a_free_slot_on_another_candidate_in_the_same_trip(
    replicas: ReplicasFactory,
) -> None:
    # Two nodes of one configured slot; a long request holds node a through replica 0. Replica
    # 1 asks with a first (as a stale view would choose it) and b as the next candidate: one
    # script call, one round trip, grants b instead of refusing a and asking again.
    made = await replicas(
        2,
        dict(name="a", models=[MODEL], num_parallel=1, token_delay=0.05),
        dict(name="b", models=[MODEL], num_parallel=1, token_delay=0.05),
    )
    by_url = {n.config.url: n.name for n in made.fleet(1).nodes.values()}
    node_a, node_b = by_url[made.nodes[0].url], by_url[made.nodes[1].url]
    leases = made.shared(1).slots.leases
    async with aiohttp.ClientSession() as http:
        body = {"model": MODEL, "prompt": "busy", "options": {"num_predict": 40}}
        async with http.post(made.urls[0] + "/api/generate", json=body) as response:
            # Its first line: the request runs, its lease on a is in Redis.
            await response.content.readline()
            busy = sum(made.nodes[i].in_flight() for i in range(2))
            assert busy == 1 and made.nodes[0].in_flight() == 1
            trips = leases.trips
            verdict, _, node = await leases.grant(
                f"{MODEL}:latest",
                "test:1",
                0.0,
                [Ask(node_a, 1, False, ""), Ask(node_b, 1, False, "")],
            )
            assert (verdict, node) == (GRANTED, node_b)
            assert leases.trips == trips + 1 and leases.refused == 0
            leases.release(node_b, f"{MODEL}:latest")
            await response.read()
    await idle(made)


async def test_a_release_hands_its_slot_to_its_own_parked_request_with_no_grant(
    replicas: ReplicasFactory,
) -> None:
    # One node of 2 configured slots, one held throughout through replica 1: replica 0's
    # requests, a few milliseconds apart, run one at a time and park. Each release of replica
    # 0 hands the slot, inside its script, to replica 0's most urgent parked request, which
    # takes it in the process: no grant of its own (before, each woken request asked with one,
    # and in overload two in three were refused), and no hand entry to take in Redis.
    made = await replicas(2, dict(name="a", models=[MODEL], num_parallel=2, token_delay=0.01))
    node = made.nodes[0]
    leases = made.shared(0).slots.leases
    requests = 12
    async with aiohttp.ClientSession() as http:
        other = asyncio.create_task(generate(http, made.urls[1], "other", tokens=200))
        await until(lambda: node.in_flight() == 1)
        trips = leases.trips
        sent = []
        for i in range(requests):
            sent.append(asyncio.create_task(generate(http, made.urls[0], f"r{i}", tokens=3)))
            await asyncio.sleep(0.01)
        await asyncio.gather(*sent)
        assert node.in_flight() == 1, "the other replica's request outlasts them"
        await other
    await idle(made)
    # The first request's grant, one refused grant that parked the next; then hand-overs.
    assert leases.operations["grant"] <= 3, leases.operations
    assert leases.handed >= requests - 3 and leases.operations["take"] <= 1, leases.operations
    assert leases.trips - trips <= requests + 3, leases.trip_kinds


async def test_a_handed_slot_taken_is_told_with_its_requests_release(
    replicas: ReplicasFactory,
) -> None:
    # One node of one configured slot, held by replica 1's request; replica 0's request is
    # refused (it parks, registered) and handed the slot by replica 1's release. It takes the
    # slot with no round trip and runs longer than `leases.LAZY_S`: Redis hears of the take with
    # its release, not in a trip of its own (before: the refused grant, the take alone, the
    # release).
    made = await replicas(2, dict(name="a", models=[MODEL], num_parallel=1, token_delay=0.02))
    node = made.nodes[0]
    leases = made.shared(0).slots.leases
    async with aiohttp.ClientSession() as http:
        other = asyncio.create_task(generate(http, made.urls[1], "other", tokens=10))
        await until(lambda: node.in_flight() == 1)
        trips = leases.trips
        await generate(http, made.urls[0], "handed", tokens=15)
        await other
    await idle(made)
    assert leases.refused == 1 and leases.taken == 1 and leases.overbooked == 0
    assert leases.trips - trips == 2, leases.trip_kinds
    assert "take" not in leases.trip_kinds, leases.trip_kinds


async def test_a_take_not_yet_told_when_the_replica_writes_back_is_counted_once(
    replicas: ReplicasFactory,
) -> None:
    # A request took a slot handed to its replica; before Redis heard of it (the take rides
    # with the next trip, up to `handed.TAKE_S` later) Redis restarted empty and the replica
    # writes back what it holds: the slot counts once there, not again for the take (which
    # found no hand entry and counted it anew: one slot held for good).
    made = await replicas(1, dict(name="a", models=[MODEL], num_parallel=2))
    shared = made.shared(0)
    leases, client, replica = shared.slots.leases, shared.link.client, shared.link.replica
    model = f"{MODEL}:latest"
    await idle(made)
    waiter = f"{replica}:900"
    await client.hset(f"sollol:slots:a|{model}", replica, 1)
    await client.hset(f"sollol:hand:a|{model}", waiter, int(time.time() * 1000) + 3000)
    leases.handed_in("a", model, waiter)
    assert leases.take("a", model, waiter) is not None
    await client.flushdb()
    leases.rejoined()
    await until(lambda: not leases._resync)
    assert await client.hget(f"sollol:slots:a|{model}", replica) == b"1"
    leases.release("a", model)
    await idle(made)
    await until(lambda: leases.mine[("a", model)] == 0)
