"""Redis failing is not the proxy failing: replicas decide alone while it is away, say so, and
rejoin when it is back, with what they hold written back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

import aiohttp
import orjson
import pytest

from sollol_proxy.app import PROXY
from sollol_proxy.config import load_config
from sollol_proxy.server import start_proxy
from sollol_proxy.shared import handed as handed_module
from sollol_proxy.shared import leases as leases_module
from sollol_proxy.shared.lease_ops import BEHIND, GRANTED, REFUSED, Ask, Grant
from sollol_proxy.shared.leases import Leases
from tests.conftest import TEST_SETTINGS, free_port
from tests.redisd import RedisServer
from tests.shared.conftest import Peak, ReplicasFactory, idle, until

MODEL = "llama3.2"


async def generate(http: aiohttp.ClientSession, url: str, prompt: str) -> int:
    async with http.post(
        url + "/api/generate",
        json={"model": MODEL, "prompt": prompt, "options": {"num_predict": 5}},
    ) as response:
        await response.read()
        return response.status


async def test_redis_stopped_and_restarted_mid_run_fails_no_request(
    replicas: ReplicasFactory, caplog: pytest.LogCaptureFixture
) -> None:
    made = await replicas(
        2,
        dict(name="a", models=[MODEL], num_parallel=2, token_delay=0.01),
        dict(name="b", models=[MODEL], num_parallel=2, token_delay=0.01),
    )
    statuses: list[int] = []
    seen_down: list[bool] = []

    async def load(http: aiohttp.ClientSession, client: int) -> None:
        deadline = time.monotonic() + 3.0
        i = 0
        while time.monotonic() < deadline:
            statuses.append(await generate(http, made.urls[(client + i) % 2], f"c{client} {i}"))
            i += 1

    async def outage() -> None:
        await asyncio.sleep(0.7)
        made.redis.stop()
        await until(lambda: not made.shared(0).link.up and not made.shared(1).link.up)
        async with aiohttp.ClientSession() as http:
            async with http.get(made.urls[0] + "/metrics") as response:
                text = await response.text()
            seen_down.append("sollol_shared_state_up 0.0" in text)
            async with http.get(made.urls[0] + "/sollol/dashboard") as response:
                alerts = orjson.loads(await response.read())["alerts"]
            seen_down.append(any(a["kind"] == "shared_state" for a in alerts))
        await asyncio.sleep(0.7)
        made.redis.start()

    caplog.set_level(logging.WARNING, logger="sollol.shared")
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(outage(), *(load(http, c) for c in range(8)))
        await until(lambda: made.shared(0).link.up and made.shared(1).link.up)
        # Shared again: the slot bound holds across the replicas after the rejoin.
        async with Peak(made.nodes) as peak:
            await asyncio.gather(
                *(generate(http, made.urls[i % 2], f"after {i}") for i in range(40))
            )
    assert statuses and set(statuses) == {200}, statuses
    assert len(statuses) > 50
    assert seen_down == [True, True]
    assert max(peak.peak.values()) <= 2, peak.peak
    for index in range(2):
        shared = made.shared(index)
        assert shared.link.outages == 1
        assert shared.slots.leases.alone > 0  # it served alone while Redis was away
    # Logged once per replica when Redis went, once when it came back.
    failed = [r for r in caplog.records if "decides alone" in r.getMessage()]
    rejoined = [r for r in caplog.records if r.getMessage().endswith("rejoined")]
    assert len(failed) == 2 and len(rejoined) == 2, [r.getMessage() for r in caplog.records]
    # What the replicas hold was written back: once idle, Redis counts nothing held (a slot
    # handed to a request that had found another goes back within handed.RESERVE_S).
    await idle(made)


async def test_a_replica_starts_and_serves_without_redis_and_joins_when_it_comes(
    tmp_path: object, http: aiohttp.ClientSession
) -> None:
    from sollol_proxy.simulator import SimulatedNode

    port = free_port()
    node = SimulatedNode(models=[MODEL], deterministic=True)
    await node.start(port=0)
    config = load_config(
        None,
        env={"SOLLOL_REDIS_URL": f"redis://127.0.0.1:{port}/0"},
        overrides={**TEST_SETTINGS, "nodes": [node.url]},
    )
    proxy = await start_proxy(config)
    server = RedisServer(tmp_path, port)  # type: ignore[arg-type]
    try:
        from sollol_proxy.app import PROXY

        shared = proxy.runner.app[PROXY].shared
        assert shared is not None and not shared.link.up
        assert await generate(http, proxy.url, "no redis yet") == 200
        async with http.get(proxy.url + "/metrics") as response:
            assert "sollol_shared_state_up 0.0" in await response.text()
        server.start()
        await until(lambda: shared.link.up)
        assert await generate(http, proxy.url, "shared now") == 200
        assert shared.slots.leases.granted == 1
    finally:
        await proxy.stop()
        await node.stop()
        server.stop()


async def test_a_redis_that_stops_answering_costs_at_most_the_timeout(
    replicas: ReplicasFactory,
) -> None:
    # SIGSTOP: connections stay open and nothing answers, the case only state.timeout catches.
    made = await replicas(
        2, dict(name="a", models=[MODEL], num_parallel=2, token_delay=0.01), state__timeout=0.25
    )
    assert made.redis.process is not None
    pid = made.redis.process.pid
    async with aiohttp.ClientSession() as http:
        assert await generate(http, made.urls[0], "before") == 200
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            statuses = await asyncio.gather(
                *(generate(http, made.urls[i % 2], f"paused {i}") for i in range(20))
            )
            took = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert set(statuses) == {200}
        # Each replica waited out one timeout, then decided alone: 20 requests of 50 ms on
        # two nodes of two slots each, well under a second beside the 0.25 s.
        assert took < 2.0, took
        assert not made.shared(0).link.up or made.shared(0).link.outages == 1
        await until(lambda: made.shared(0).link.up and made.shared(1).link.up)
        assert await generate(http, made.urls[1], "after") == 200
    assert made.shared(0).link.outages == 1 and made.shared(1).link.outages == 1


async def test_what_redis_holds_that_is_not_understood_stops_nothing(
    replicas: ReplicasFactory,
) -> None:
    # Another version's or a stranger's writes under the same prefix: events and entries that
    # do not parse are dropped; the listening, ejections and leases go on.
    made = await replicas(2, dict(name="a", models=[MODEL], num_parallel=1, token_delay=0.01))
    client = made.shared(0).link.client
    for junk in (b"{", b'{"kind": "served", "served": [1, 2]}', b'{"kind": "handed"}'):
        await client.publish("sollol:events", junk)
    await client.hset("sollol:ejections", "a", b"not json")
    await client.hset("sollol:learned", "someone", b'{"at": "soon"}')
    await asyncio.sleep(2.5)  # a learned-speeds exchange and a few probe intervals
    async with aiohttp.ClientSession() as http:
        statuses = await asyncio.gather(
            *(generate(http, made.urls[i % 2], f"after junk {i}") for i in range(6))
        )
    assert set(statuses) == {200}
    for index in range(2):
        shared = made.shared(index)
        assert shared.link.subscribed and shared.link.outages == 0
        leases = shared.slots.leases
        assert leases.granted + leases.taken >= 3 and leases.alone == 0
        tasks = made.proxies[index].runner.app[PROXY].tasks._tasks
        alive = {t.get_name() for t in tasks if not t.done()}
        assert {"shared:events", "shared:leases", "shared:health", "shared:learning"} <= alive


async def test_requests_waiting_for_a_handed_slot_are_served_when_redis_goes_away(
    replicas: ReplicasFactory,
) -> None:
    # One slot, two replicas: a long request holds it through one replica, three requests at
    # the other are refused and wait for a release to hand them the slot. Redis stops: no
    # release will hand them anything, so they ask again at once and are served alone, rather
    # than after queue.max_wait (300 s; it was so, the cause of a run of tests/shared that
    # took five minutes).
    made = await replicas(2, dict(name="a", models=[MODEL], num_parallel=1, token_delay=0.05))
    slots = made.shared(1).slots
    async with aiohttp.ClientSession() as http:
        body = {"model": MODEL, "prompt": "busy", "options": {"num_predict": 40}}
        busy = asyncio.create_task(http.post(made.urls[0] + "/api/generate", json=body))
        await until(lambda: made.nodes[0].in_flight() == 1)
        waiting = [asyncio.create_task(generate(http, made.urls[1], f"w{i}")) for i in range(3)]
        await until(lambda: slots.leases.refused >= 3 and len(slots._waiting) >= 2)
        made.redis.stop()
        async with asyncio.timeout(15):
            statuses = await asyncio.gather(*waiting)
            async with await busy as response:
                assert response.status == 200
                await response.read()
    assert statuses == [200, 200, 200]
    assert slots.leases.alone >= 3


async def test_a_request_cancelled_as_its_grant_comes_gives_its_lease_back(
    replicas: ReplicasFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client leaves in the very turn of the event loop that answers its grant: the lease is
    # counted as held, and its task is cancelled before it can take its slot. It must go back
    # to Redis, or the node's one slot stays leased for good and every later request waits.
    made = await replicas(1, dict(name="a", models=[MODEL], num_parallel=1, token_delay=0.01))
    leases = made.shared(0).slots.leases
    asking: dict[str, asyncio.Task[object]] = {}
    grant, done = leases_module.Leases.grant, leases_module.Leases._done
    cancelled: list[str] = []

    async def grant_seen(self: Leases, model: str, waiter: str, *args: object) -> object:
        task = asyncio.current_task()
        assert task is not None
        asking[waiter] = task
        return await grant(self, model, waiter, *args)  # type: ignore[arg-type]

    def done_then_cancel(self: Leases, op: object, reply: object) -> None:
        done(self, op, reply)  # type: ignore[arg-type]
        if isinstance(op, Grant) and not cancelled:
            cancelled.append(op.waiter)
            asking[op.waiter].cancel()

    monkeypatch.setattr(leases_module.Leases, "grant", grant_seen)
    monkeypatch.setattr(leases_module.Leases, "_done", done_then_cancel)
    body = {"model": MODEL, "prompt": "x", "options": {"num_predict": 3}}
    async with aiohttp.ClientSession() as http:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.post(made.urls[0] + "/api/generate", json=body) as first:
                await first.read()
        assert cancelled
        await until(lambda: sum(leases.mine.values()) == 0)
        async with asyncio.timeout(5):
            async with http.post(made.urls[0] + "/api/generate", json=body) as second:
                assert second.status == 200
                await second.read()
        await until(lambda: sum(leases.mine.values()) == 0)  # its release goes on the next trip


async def test_a_slot_handed_over_and_expired_before_its_release_is_not_counted_twice(
    replicas: ReplicasFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # B's release hands the node's one slot to A's waiter, which never takes it; A gives it
    # back late (a loop stall, a late event: RESERVE_S stretched to 4 s stands in), after the
    # hand-over expired in Redis (3 s), which took it off A's count there. A must not go on
    # counting it, or its next write-back puts a phantom slot into Redis.
    made = await replicas(2, dict(name="a", models=[MODEL], num_parallel=1, token_delay=0.05))
    node = next(iter(made.fleet(0).nodes))
    model = f"{MODEL}:latest"
    a, b = made.shared(0), made.shared(1)
    ask = [Ask(node, 1, False, "")]
    assert (await b.slots.leases.grant(model, f"{b.link.replica}:1", 0.0, ask))[0] == GRANTED
    verdict, _, _ = await a.slots.leases.grant(model, f"{a.link.replica}:1", 1.0, ask)
    assert verdict in (REFUSED, BEHIND)
    a.slots.leases.waiters[f"{a.link.replica}:1"] = model
    monkeypatch.setattr(handed_module, "RESERVE_S", 4.0)
    b.slots.leases.release(node, model)  # handed to A's waiter
    await until(lambda: bool(a.slots.leases.reserved))
    await asyncio.sleep(3.2)  # the hand-over expires (HAND_TTL_MS)
    assert (await b.slots.leases.grant(model, f"{b.link.replica}:2", 0.0, ask))[0] == GRANTED
    await until(lambda: not a.slots.leases.reserved, within=3.0)  # A gives it back, late
    await until(lambda: sum(a.slots.leases.mine.values()) == 0)
    b.slots.leases.release(node, model)
    a.slots.leases.rejoined()  # a write-back: what A counts goes into Redis
    await asyncio.sleep(0.3)
    assert (await b.slots.leases.grant(model, f"{b.link.replica}:3", 0.0, ask))[0] == GRANTED


async def test_a_belief_redis_lost_is_told_again_after_the_write_back(
    replicas: ReplicasFactory,
) -> None:
    # A restarted Redis (no persistence) lost every replica's belief with their leases. The
    # replica writes back what it holds when its next grant finds itself unknown; its belief
    # must be told again too, not only when it next changes (it was missing from the shared
    # belief, and from the other replicas' adoptions, for as long as the node stayed as it was).
    made = await replicas(
        1,
        dict(
            name="a",
            models=[MODEL],
            num_parallel=2,
            token_delay=0.01,
            told=False,
            deterministic=False,
        ),
    )
    shared = made.shared(0)
    client, replica = shared.link.client, shared.link.replica
    node = next(iter(made.fleet(0).nodes))
    key = f"sollol:belief:{node}|{MODEL}:latest"
    async with aiohttp.ClientSession() as http:
        for wave in range(20):
            await asyncio.gather(*(generate(http, made.urls[0], f"{wave}.{i}") for i in range(3)))
            if await client.hget(key, replica) is not None:
                break
        told = await client.hget(key, replica)
        assert told is not None, "the replica never told its belief"
        await client.flushdb()
        # One request at a time: the belief does not change, so only a write-back retells it.
        for i in range(6):
            assert await generate(http, made.urls[0], f"after {i}") == 200
        await until(lambda: shared.slots.leases.alone > 0)
        for i in range(4):
            assert await generate(http, made.urls[0], f"later {i}") == 200
        assert await client.zscore("sollol:alive", replica) is not None  # written back
        assert await client.hget(key, replica) == told
