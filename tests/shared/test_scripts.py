"""The shared-slot scripts run on a real redis-server with the state set by hand: the cases
that traffic reaches only through rare timings."""

from __future__ import annotations

import redis.asyncio as aioredis

from sollol_proxy.shared.lease_ops import GRANTED
from sollol_proxy.shared.scripts import SCRIPTS
from tests.redisd import RedisServer

PAIR = "a|m"


async def test_a_grant_counts_the_slot_an_expired_hand_over_frees(
    redis_server: RedisServer,
) -> None:
    # Replica A was handed the node's one slot for its waiter and never took it: the hand-over
    # expired. B's grant expires it, and must count the slot as free, not refuse it.
    client = aioredis.from_url(redis_server.url)
    try:
        far = 10**13  # milliseconds: alive for the test's length
        await client.zadd("alive", {"A": far, "B": far})
        await client.hset(f"slots:{PAIR}", "A", 1)
        await client.hset(f"hand:{PAIR}", "A:w1", 1)  # expired at 1 ms after the epoch
        keys = ["alive", "wait:m", "wexp:m", f"slots:{PAIR}", f"hand:{PAIR}", f"belief:{PAIR}"]
        args = ["B", "B:w2", "5", 10_000, "events", "m", "a", 1, 0, ""]
        reply = await client.eval(SCRIPTS["grant"], len(keys), *keys, *args)
        assert int(reply[0]) == GRANTED
        assert await client.hgetall(f"slots:{PAIR}") == {b"B": b"1"}
        assert await client.hgetall(f"hand:{PAIR}") == {}
    finally:
        await client.aclose()


async def shared_belief(client: aioredis.Redis, told: dict[str, str]) -> bytes:
    """The shared belief a grant of replica D on node a reports when the replicas told
    `told` (replica -> `believed` or `believed/upper`)."""
    far = 10**13
    await client.delete(f"belief:{PAIR}", f"slots:{PAIR}")
    await client.zadd("alive", dict.fromkeys([*told, "D"], far))
    await client.hset(f"belief:{PAIR}", mapping=told)
    keys = ["alive", "wait:m", "wexp:m", f"slots:{PAIR}", f"hand:{PAIR}", f"belief:{PAIR}"]
    args = ["D", "D:w", "5", 10_000, "events", "m", "a", 1, 1, ""]
    reply = await client.eval(SCRIPTS["grant"], len(keys), *keys, *args)
    assert int(reply[0]) == GRANTED
    return bytes(reply[5])


async def test_one_replicas_proof_raises_the_shared_belief_and_waits_need_a_majority(
    redis_server: RedisServer,
) -> None:
    # A proved 4 slots with its own requests; B and C believe 3, and nothing waited above
    # their beliefs: they bound nothing, so the shared belief is A's 4. With the lower median
    # of the beliefs it stayed 3 until a second replica proved 4, which came only when the
    # timings allowed (tests/shared/test_slots.py).
    client = aioredis.from_url(redis_server.url)
    try:
        assert await shared_belief(client, {"A": "4", "B": "3", "C": "3"}) == b"4"
        # B's probe at 4 waited: one replica's waits do not hold the others back.
        assert await shared_belief(client, {"A": "4", "B": "3/3", "C": "3"}) == b"4"
        # Two of three waited above 3: the node has 3 slots for the majority (a restart, or
        # A's proof counted a request that was in fact waiting).
        assert await shared_belief(client, {"A": "4", "B": "3/3", "C": "2/3"}) == b"3"
        # Bounded, but at more than anyone proved: what was proved.
        assert await shared_belief(client, {"A": "2/5", "B": "2/5"}) == b"2"
        # Two replicas: the lower of their bounds.
        assert await shared_belief(client, {"A": "4", "B": "2/2"}) == b"2"
    finally:
        await client.aclose()


async def release(client: aioredis.Redis, parked: str) -> list[object]:
    """A's release of its one slot on node a (2 configured slots, B holding the other), naming
    its `parked` request ("": none)."""
    await client.hset(f"slots:{PAIR}", mapping={"A": 1, "B": 1})
    keys = [f"slots:{PAIR}", "alive", "wait:m", "wexp:m", f"hand:{PAIR}", f"belief:{PAIR}"]
    args = ["A", "events", "a", "m", 2, "", 0, parked, ""]
    return list(await client.eval(SCRIPTS["release"], len(keys), *keys, *args))


async def test_a_release_hands_its_slot_to_its_own_parked_request_in_its_turn(
    redis_server: RedisServer,
) -> None:
    # Waiters, most urgent first: A:old (a registration of A's still on its way out), B:w, A:p
    # (A's parked request, which A puts before its local queue), A:q, B:v.
    client = aioredis.from_url(redis_server.url)
    try:
        far = 10**13
        waiters = {"A:old": 1, "B:w": 2, "A:p": 3, "A:q": 4, "B:v": 5}
        await client.zadd("alive", {"A": far, "B": far})
        await client.zadd("wait:m", waiters)
        await client.zadd("wexp:m", dict.fromkeys(waiters, far))
        # A's release passes A:old over and hands the slot to B:w, more urgent than A:p.
        reply = await release(client, "A:p")
        assert reply == [1, 2, b""], reply  # nothing handed to A's own
        assert await client.hgetall(f"slots:{PAIR}") == {b"B": b"2"}
        assert list(await client.hkeys(f"hand:{PAIR}")) == [b"B:w"]
        # The next one hands it to A:p itself: A's lease, with no hand entry (A's request takes
        # it in A's process), and A:q after it is left alone.
        await client.delete(f"hand:{PAIR}")
        reply = await release(client, "A:p")
        assert reply[:3] == [1, 2, b""] and [e.split(b"|")[0] for e in reply[3:]] == [b"A:p"]
        assert await client.hgetall(f"slots:{PAIR}") == {b"A": b"1", b"B": b"1"}
        assert await client.hgetall(f"hand:{PAIR}") == {}
        assert await client.zrange("wait:m", 0, -1) == [b"A:old", b"A:q", b"B:v"]
        # With no parked request named, A's own waiter first stops the hand-over: the slot
        # stays free for A's local queue (2).
        reply = await release(client, "")
        assert reply == [2, 1, b""], reply
        assert await client.hgetall(f"slots:{PAIR}") == {b"B": b"1"}
    finally:
        await client.aclose()
