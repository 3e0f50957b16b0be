"""Slots and queue order shared by replicas in Redis: real redis-server, real sockets, several
proxies in front of the same simulated nodes."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from sollol_proxy.fleet import capacity
from tests.shared.conftest import Peak, Replicas, ReplicasFactory, idle, until

MODEL = "llama3.2"


def unknown_node(name: str, *, slots: int) -> dict[str, object]:
    """A node given as a URL only, with real timings (a slot wait shows in them), so that the
    replicas learn its slots."""
    return dict(
        name=name,
        models=[MODEL],
        num_parallel=slots,
        token_delay=0.01,
        told=False,
        deterministic=False,
    )


def shared_belief(told: dict[bytes, bytes]) -> int:
    """The replicas' shared belief from their beliefs told to Redis (`scripts._BOUND`): the
    highest, no higher than the lower median of their upper bounds (`believed/upper`)."""
    beliefs, uppers = [], []
    for value in told.values():
        believed, _, upper = value.decode().partition("/")
        beliefs.append(int(believed))
        uppers.append(int(upper) if upper else 10**9)
    uppers.sort()
    return min(max(beliefs), uppers[(len(uppers) - 1) // 2])


async def generate(
    http: aiohttp.ClientSession, url: str, prompt: str, *, priority: int = 5, tokens: int = 5
) -> bytes:
    async with http.post(
        url + "/api/generate",
        json={"model": MODEL, "prompt": prompt, "options": {"num_predict": tokens}},
        headers={"X-Sollol-Priority": str(priority)},
    ) as response:
        body = await response.read()
        assert response.status == 200, body
        return body


async def test_in_flight_per_node_never_exceeds_the_shared_slots(
    replicas: ReplicasFactory,
) -> None:
    # Each replica alone believes it owns both slots of each node: without sharing, three
    # replicas would run up to six requests on a node.
    made: Replicas = await replicas(
        3,
        dict(name="a", models=[MODEL], num_parallel=2, token_delay=0.01),
        dict(name="b", models=[MODEL], num_parallel=2, token_delay=0.01),
    )
    async with aiohttp.ClientSession() as http, Peak(made.nodes) as peak:
        await asyncio.gather(*(generate(http, made.urls[i % 3], f"request {i}") for i in range(90)))
    assert 1 <= peak.peak["a"] <= 2 and 1 <= peak.peak["b"] <= 2, peak.peak
    assert sum(len(n.requests) for n in made.nodes) >= 90
    for index in range(3):
        slots = made.shared(index).slots
        leases = slots.leases
        assert leases.granted + leases.taken >= 1 and leases.alone == 0
    # Every lease came back: nothing is held in Redis once the requests are over (a slot handed
    # to a request that had found another goes back within leases.RESERVE_S).
    await idle(made)


async def test_a_more_urgent_request_at_one_replica_takes_the_freed_slot_first(
    replicas: ReplicasFactory,
) -> None:
    made = await replicas(2, dict(name="a", models=[MODEL], num_parallel=1, token_delay=0.02))
    node = made.nodes[0]
    async with aiohttp.ClientSession() as http:
        busy = asyncio.create_task(generate(http, made.urls[0], "first", tokens=20))
        await until(lambda: node.in_flight() == 1)
        # The low-priority request arrives first, at the other replica: in one FIFO it would
        # go next.
        low = asyncio.create_task(generate(http, made.urls[1], "low", priority=1))
        await until(lambda: made.shared(1).slots.leases.refused >= 1)
        high = asyncio.create_task(generate(http, made.urls[0], "high", priority=9))
        await until(lambda: made.admission(0).waiting == 1)
        await asyncio.gather(busy, low, high)
    prompts = [orjson.loads(r.body)["prompt"] for r in node.requests if r.path == "/api/generate"]
    assert prompts == ["first", "high", "low"], prompts


async def test_ageing_orders_waiters_across_replicas_as_in_one_queue(
    replicas: ReplicasFactory,
) -> None:
    # queue.ageing 0.2 s: a priority-1 request that waited 2 s outranks a fresh priority-9 one.
    made = await replicas(
        2, dict(name="a", models=[MODEL], num_parallel=1, token_delay=0.05), queue__ageing=0.2
    )
    node = made.nodes[0]
    async with aiohttp.ClientSession() as http:
        busy = asyncio.create_task(generate(http, made.urls[0], "first", tokens=50))
        await until(lambda: node.in_flight() == 1)
        old = asyncio.create_task(generate(http, made.urls[1], "old", priority=1))
        await asyncio.sleep(2.0)
        fresh = asyncio.create_task(generate(http, made.urls[0], "fresh", priority=9))
        await asyncio.gather(busy, old, fresh)
    prompts = [orjson.loads(r.body)["prompt"] for r in node.requests if r.path == "/api/generate"]
    assert prompts == ["first", "old", "fresh"], prompts


async def test_every_key_is_under_the_configured_prefix(replicas: ReplicasFactory) -> None:
    # Two teams may share one Redis: each fleet's keys and events stay under its own prefix.
    made: Replicas = await replicas(
        2,
        dict(name="a", models=[MODEL], num_parallel=1, token_delay=0.01),
        state__key_prefix="team-a:",
    )
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(generate(http, made.urls[i % 2], f"request {i}") for i in range(6)))
    link = made.shared(0).link
    assert link.channel == "team-a:events"
    keys = [key async for key in link.client.scan_iter("*")]
    assert keys, "the replicas wrote nothing to Redis"
    assert all(key.startswith(b"team-a:") for key in keys), keys


async def test_learned_slots_are_shared_and_bound_every_replica(replicas: ReplicasFactory) -> None:
    # Nodes given as URLs only: the slots are learned. The replicas' beliefs meet in Redis (the
    # lower median of theirs is everyone's bound), and all of them together run at most one
    # request more than it on a node (one probe), where three replicas each learning alone and
    # probing would run up to three more.
    made: Replicas = await replicas(
        3,
        unknown_node("a", slots=2),
        unknown_node("b", slots=2),
    )
    async with aiohttp.ClientSession() as http, Peak(made.nodes) as peak:
        for _ in range(3):
            await asyncio.gather(
                *(generate(http, made.urls[i % 3], f"request {i}", tokens=20) for i in range(60))
            )
    client = made.shared(0).link.client
    for simulated in made.nodes:
        node = next(n.name for n in made.fleet(0).nodes.values() if n.config.url == simulated.url)
        told = await client.hgetall(f"sollol:belief:{node}|{MODEL}:latest")
        assert len(told) == 3, told  # every replica learned it, or took it from the others
        shared = shared_belief(told)  # the bound's base
        assert 2 <= shared <= 3, told
        assert peak.peak[simulated.name] <= shared + 1, peak.peak
    await idle(made)


async def test_replicas_learn_from_the_slots_all_of_them_hold(replicas: ReplicasFactory) -> None:
    # One node of 4 slots given as a URL (real timings), three replicas, waves of 12 requests:
    # each replica has about a third of a node's requests in flight. A run without a slot wait
    # proves the slots all replicas held there at its grant (Redis's count) up to the shared
    # belief, and its own beyond it, so the shared belief climbs as one replica's would (one
    # replica's proof raises it: `scripts._BOUND`). Proving only a replica's own requests, it
    # was still 2 or 3 after eight waves; with the lower median of the beliefs it stalled at 3
    # in a third of the runs once parked requests were handed their slots by their own
    # replica's release (a second replica's proof of 4 came only when timings allowed);
    # counting the others' requests beyond the shared belief (one may be waiting inside
    # Ollama), it reached 5 or 6 in half of them. Up to twelve waves are sent, stopping once
    # it is reached.
    made: Replicas = await replicas(
        3,
        unknown_node("a", slots=4),
    )
    client = made.shared(0).link.client
    node = next(iter(made.fleet(0).nodes.values())).name
    async with aiohttp.ClientSession() as http, Peak(made.nodes) as peak:
        for wave in range(12):
            await asyncio.gather(
                *(generate(http, made.urls[i % 3], f"{wave}.{i}", tokens=20) for i in range(12))
            )
            told = await client.hgetall(f"sollol:belief:{node}|{MODEL}:latest")
            shared = shared_belief(told)
            if wave >= 7 and len(told) == 3 and shared >= 4:
                break
        assert len(told) == 3 and shared == 4, told
        # A replica adopts the shared belief from a grant's answer: the wave's last release may
        # have moved it after a replica's last grant, so each replica asks once more.
        for url in made.urls:
            await generate(http, url, "after", tokens=1)
    for index in range(3):  # every replica believes at least the shared belief (adopted)
        estimator = made.fleet(index).nodes[node].beliefs.slots[MODEL + ":latest"].estimator
        assert estimator.believed >= 4, (index, estimator.believed)
    assert peak.peak["a"] <= shared + 1, peak.peak
    await idle(made)


async def test_a_freed_slot_is_handed_to_a_waiter_not_raced_for(replicas: ReplicasFactory) -> None:
    # One slot, three replicas, twelve requests at once: a waiting request is refused about
    # once (the refusal registers it; the most urgent of a replica also asks again after a
    # second) and then handed a slot by a release. Before the hand-over, every replica's most
    # urgent waiter asked again at each release and all but one were refused: 12 + 11 x 2.
    made: Replicas = await replicas(
        3, dict(name="a", models=[MODEL], num_parallel=1, token_delay=0.01)
    )
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(generate(http, made.urls[i % 3], f"request {i}") for i in range(12)))
    leases = [made.shared(i).slots.leases for i in range(3)]
    assert sum(lease.taken for lease in leases) >= 6, [lease.taken for lease in leases]
    assert sum(lease.refused for lease in leases) <= 2 * 12, [lease.refused for lease in leases]
    await idle(made)  # every release written: the counters stand still
    # /metrics says the same: slots handed, the requests' round trips, handed slots given back
    # or taken twice.
    async with aiohttp.ClientSession() as http:
        for i, lease in enumerate(leases):
            async with http.get(made.urls[i] + "/metrics") as response:
                text = await response.text()
            assert f'sollol_shared_leases_total{{result="handed"}} {float(lease.taken)}' in text
            assert f"sollol_shared_request_round_trips_total {float(lease.trips)}" in text
            assert lease.trips >= 1
            assert f"sollol_shared_handed_returned_total {float(lease.returned)}" in text
            assert f"sollol_shared_handed_overbooked_total {float(lease.overbooked)}" in text


async def test_a_probe_that_finds_no_free_slot_stays_with_its_lease(
    replicas: ReplicasFactory,
) -> None:
    # Alone, a replica sends such a probe back to its queue; with Redis the slot it would be
    # granted on the way back carries no lease, which the other replicas count: it waits on the
    # node's semaphore instead, leased throughout.
    made = await replicas(2, unknown_node("a", slots=1))
    node = made.nodes[0]
    state = next(iter(made.fleet(0).nodes.values()))
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(generate(http, made.urls[0], f"w{i}") for i in range(12)))
        belief = capacity.slot_belief(state, MODEL + ":latest")
        assert belief is not None and belief.estimator.believed == 1
        belief.estimator.finished(1, None, asyncio.get_running_loop().time())  # a probe is due
        cancelled = node.cancelled
        first = asyncio.create_task(generate(http, made.urls[0], "A", tokens=100))
        await until(lambda: node.in_flight() == 1)
        body = {"model": MODEL, "prompt": "P", "options": {"num_predict": 100}}
        async with http.post(made.urls[0] + "/api/generate", json=body) as probe:
            assert probe.status == 200
            assert "a probe on" not in probe.headers["X-Sollol-Route"]
            await probe.read()
        await first
    assert node.cancelled == cancelled
