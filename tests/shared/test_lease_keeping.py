"""A lease goes with the slot that holds it: not held by a request that does not run, not given
back by a slot that never had it, not left behind by a request that went away."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest

from sollol_proxy.admission.tickets import Held
from sollol_proxy.fleet.plan import Plan
from sollol_proxy.fleet.waiting import Hold
from sollol_proxy.shared import leases as leases_module
from sollol_proxy.shared.lease_ops import GRANTED, Ask, Grant
from sollol_proxy.shared.leases import Leases
from tests.shared.conftest import Replicas, ReplicasFactory, idle, until
from tests.shared.test_slots import MODEL, generate


async def test_a_slot_moved_by_a_failover_does_not_give_back_another_requests_lease(
    replicas: ReplicasFactory,
) -> None:
    # A request's lease is on the node it was granted; a failover moves its slot to another
    # node, where it holds none. Counted per node, its end gave back the lease of the request
    # still running there: Redis counted one slot fewer than ran, and another replica's grant
    # could take it.
    made: Replicas = await replicas(
        1,
        dict(name="a", models=[MODEL], num_parallel=2, token_delay=0.01),
        dict(name="b", models=[MODEL], num_parallel=2, token_delay=0.01),
    )
    shared = made.shared(0)
    client = shared.link.client
    async with aiohttp.ClientSession() as http:
        for name in ("a", "b"):  # both resident: the next request may go to either
            body = {"model": MODEL, "prompt": "warm", "options": {"num_predict": 1}}
            headers = {"X-Sollol-Node": name}
            async with http.post(made.urls[0] + "/api/generate", json=body, headers=headers) as r:
                assert r.status == 200
                await r.read()
        long = asyncio.create_task(generate(http, made.urls[0], "long", tokens=150))
        await until(lambda: sum(n.in_flight() for n in made.nodes) == 1)
        busy = next(n for n in made.nodes if n.in_flight() == 1)
        other = next(n for n in made.nodes if n is not busy)
        other.faults.status_error = (500, "an error was encountered while running the model")
        body = {"model": MODEL, "prompt": "moved", "options": {"num_predict": 3}}
        async with http.post(made.urls[0] + "/api/generate", json=body) as response:
            assert response.status == 200
            assert f"(after {other.name}" in response.headers["X-Sollol-Route"]
            await response.read()
        other.faults.status_error = None
        await asyncio.sleep(0.2)  # its give went on a trip by now, if it gave one
        assert busy.in_flight() == 1
        held = await client.hget(f"sollol:slots:{busy.name}|{MODEL}:latest", shared.link.replica)
        assert held == b"1", held  # the long request's lease, still counted
        await long
    await idle(made)


async def test_a_lease_granted_elsewhere_is_not_held_while_its_request_would_queue(
    replicas: ReplicasFactory,
) -> None:
    # Granted on another candidate than its first choice, a request takes its local slot there
    # without queueing; when it cannot (its plan would now hold it for another node), it gives
    # the lease back at once rather than hold it, unused, while it waits in the local queue.
    made = await replicas(1, dict(name="a", models=[MODEL], num_parallel=2, token_delay=0.01))
    slots = made.shared(0).slots
    admission = made.admission(0)
    node = next(iter(made.fleet(0).nodes.values()))
    model = f"{MODEL}:latest"
    verdict, _, _ = await slots.leases.grant(model, "test:1", 0.0, [Ask(node.name, 2, False, "")])
    assert verdict == GRANTED and slots.leases.mine[(node.name, model)] == 1

    def held_for_another(_: list[object]) -> Plan:
        return Plan(hold=Hold("elsewhere", time.monotonic() + 30.0))

    def local(nodes, since, jump):  # type: ignore[no-untyped-def]
        return Held(admission._acquire(5, model, ("test",), nodes, held_for_another, since, jump))

    async with asyncio.timeout(2):
        moved = await slots._move(local, lambda: [node], node.name, model, time.monotonic())
    assert moved is None and admission.waiting == 0
    await until(lambda: slots.leases.mine[(node.name, model)] == 0)
    await idle(made)


@pytest.mark.parametrize("when", ["before", "as"])
async def test_a_request_gone_while_its_grant_is_refused_leaves_no_waiter(
    replicas: ReplicasFactory, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    # The refused grant registers the request among the waiters in Redis; its client went away
    # before the answer came (or in the turn it came). Left registered, the next release would
    # hand the slot to a request that is gone (and it would count in the order until expiry).
    made = await replicas(2, dict(name="a", models=[MODEL], num_parallel=1, token_delay=0.01))
    leases = made.shared(0).slots.leases
    asking: dict[str, asyncio.Task[object]] = {}
    grant, done = leases_module.Leases.grant, leases_module.Leases._done

    async def grant_seen(self: Leases, model: str, waiter: str, *args: object) -> object:
        task = asyncio.current_task()
        assert task is not None
        asking[waiter] = task
        return await grant(self, model, waiter, *args)  # type: ignore[arg-type]

    def cancel_at_answer(self: Leases, op: object, reply: object) -> None:
        mine = isinstance(op, Grant) and op.waiter in asking
        if mine and when == "before":
            asking[op.waiter].cancel()
        done(self, op, reply)  # type: ignore[arg-type]
        if mine and when == "as":
            asking[op.waiter].cancel()

    client = made.shared(0).link.client
    async with aiohttp.ClientSession() as http:
        busy = asyncio.create_task(generate(http, made.urls[1], "busy", tokens=40))
        await until(lambda: made.nodes[0].in_flight() == 1)
        monkeypatch.setattr(leases_module.Leases, "grant", grant_seen)
        monkeypatch.setattr(leases_module.Leases, "_done", cancel_at_answer)
        body = {"model": MODEL, "prompt": "gone", "options": {"num_predict": 3}}
        with contextlib.suppress(aiohttp.ClientError):
            async with http.post(made.urls[0] + "/api/generate", json=body) as response:
                await response.read()
        assert asking and leases.refused == 1
        await until(lambda: not leases.waiters)
        await asyncio.sleep(leases_module.LAZY_S + 0.1)  # the lazy Forget: next trip or LAZY_S
        assert await client.zrange(f"sollol:wait:{MODEL}:latest", 0, -1) == []
        await busy
    await idle(made)


async def test_a_slot_its_own_release_handed_and_nobody_took_goes_back(
    replicas: ReplicasFactory,
) -> None:
    # A release handed its slot to this replica's parked request (counted as its lease, with no
    # hand entry in Redis), and that request had gone: after `handed.RESERVE_S` the slot is
    # given back as a plain lease, not as a hand-over Redis never noted (which it would refuse,
    # leaving the slot counted for good).
    made = await replicas(1, dict(name="a", models=[MODEL], num_parallel=2))
    shared = made.shared(0)
    leases = shared.slots.leases
    model = f"{MODEL}:latest"
    await shared.link.client.hset(f"sollol:slots:a|{model}", shared.link.replica, 1)
    leases.handed_in("a", model, "gone:1", 1, 0, kept=False, direct=True)
    assert leases.reserved == {("a", model): ["gone:1"]}
    await idle(made)
    assert leases.returned == 1 and not leases.reserved and leases.operations["release"] == 1
    # Redis counts the slot back (`idle`) before this replica reads the release's answer, which
    # is when it counts it back too: on a loaded machine, a moment later.
    await until(lambda: leases.mine[("a", model)] == 0)
