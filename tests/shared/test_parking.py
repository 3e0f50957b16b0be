"""Refused requests parked at their replica: served in their turn, not after later arrivals."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from tests.shared.conftest import Replicas, ReplicasFactory, idle, until
from tests.shared.test_slots import MODEL, generate


async def test_parked_requests_are_served_before_later_arrivals_of_their_replica(
    replicas: ReplicasFactory,
) -> None:
    # One node of 2 slots, one of them held throughout by the other replica: this replica's
    # table has a slot free that Redis refuses, so its requests park; once its table is full,
    # later ones wait in its local queue. A release whose most urgent waiter is this replica's
    # used to leave the slot to the local queue whenever it was not empty, so the parked
    # requests waited for a lull (or `queue.max_wait`) while later arrivals passed them.
    made: Replicas = await replicas(
        2, dict(name="a", models=[MODEL], num_parallel=2, token_delay=0.01)
    )
    node = made.nodes[0]
    async with aiohttp.ClientSession() as http:
        other = asyncio.create_task(generate(http, made.urls[1], "other", tokens=20))
        await until(lambda: node.in_flight() == 1)
        sent = []
        for i in range(20):
            sent.append(asyncio.create_task(generate(http, made.urls[0], f"r{i}", tokens=15)))
            await asyncio.sleep(0.04)
        await asyncio.gather(other, *sent)
    prompts = [orjson.loads(r.body)["prompt"] for r in node.requests if r.path == "/api/generate"]
    mine = [p for p in prompts if p != "other"]
    # In arrival order, but for a release and a refusal crossing on the wire (a request
    # refused as the slot it asked for was freed can be passed by the next arrival): with the
    # parked requests left to the deadline, r2 and r3 came last of twenty.
    ahead = [int(p[1:]) - i for i, p in enumerate(mine)]  # places it passed earlier ones
    assert sorted(mine) == sorted(f"r{i}" for i in range(20)) and max(ahead) <= 1, mine
    assert made.shared(0).slots.leases.refused >= 1  # they did park (the later ones unrefused)
    await idle(made)


async def test_a_handed_slot_its_request_declined_is_not_offered_to_it_again(
    replicas: ReplicasFactory,
) -> None:
    # A parked request offered a slot handed to its replica (`unclaimed`) whose plan would not
    # take it (it holds for another node: `NotPlaced`) asked Redis again, was refused, parked,
    # and was offered the same slot again: a refused grant per offer until the slot went back
    # (4-5 per request in `bench replicas`' overload with three replicas).
    made = await replicas(1, dict(name="a", models=[MODEL], num_parallel=2, token_delay=0.01))
    leases = made.shared(0).slots.leases
    model = f"{MODEL}:latest"
    leases.reserved[("a", model)] = ["elsewhere:1"]  # handed for a waiter that left
    assert leases.unclaimed(model, "here:1", {"a"}) is None
    assert "here:1" not in leases.promised  # the local queue may still take it
    assert leases.unclaimed(model, "here:1", set()) == "a"
    assert leases.promised["here:1"] == "elsewhere:1"
    leases.reserved.clear()
    leases.promised.clear()
    await idle(made)
