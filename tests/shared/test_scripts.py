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
