"""The process's one Redis client, and whether Redis answers.

Every operation is one pipeline bounded by `state.timeout`. The first failure (refused, reset,
timed out, or a script Redis no longer has after a restart) marks Redis down: logged once,
shown by `sollol_shared_state_up` and a dashboard alert, and from then on every shared
decision is taken alone with local state. A background loop asks Redis again every
`RETRY_S`; when it answers, the scripts are loaded again and the parts that share state are
told (`on_rejoin`) so that they write back what this replica holds before sharing again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from sollol_proxy.config.model import redact_password
from sollol_proxy.config.policies import StatePolicy
from sollol_proxy.shared.scripts import SCRIPTS, SHA

log = logging.getLogger("sollol.shared")

RETRY_S = 0.5  # while Redis is down, how often it is asked again
# Besides Redis's own errors, the client raises RuntimeError on a transport closed under it
# (seen when a pooled connection was closed while in use): every exception of the client is
# Redis failing, never a reason for a background task to die.
FAILURES = (RedisError, OSError, TimeoutError, RuntimeError, ValueError)


def replica_id() -> str:
    """Unique per process, readable in Redis: host, pid and a random tail (pids repeat)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


class Link:
    def __init__(self, policy: StatePolicy, replica: str | None = None) -> None:
        self.policy = policy
        self.replica = replica or replica_id()
        self.prefix = policy.key_prefix
        self.channel = policy.key_prefix + "events"
        # No retries inside the client: a failure must reach us at once, within the timeout.
        options: dict[str, Any] = {
            "socket_timeout": policy.timeout,
            "socket_connect_timeout": policy.timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        self.client = redis.from_url(policy.redis_url, **options)
        # Pub/sub reads block until a message comes: no socket timeout there.
        self._events_client = redis.from_url(
            policy.redis_url, **{**options, "socket_timeout": None}
        )
        self.up = False
        self._answers = asyncio.Event()  # set while up: the event listener waits on it
        self.subscribed = False
        self.reason = "not connected yet"
        self.down_since: float | None = time.time()
        self.outages = 0
        self.round_trips = 0
        self.round_trip_s = 0.0
        self.on_rejoin: list[Callable[[], None]] = []
        self.on_down: list[Callable[[], None]] = []  # told once when Redis stops answering
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}

    @property
    def where(self) -> str:
        return redact_password(self.policy.redis_url)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def pipeline(self, build: Callable[[Pipeline], None]) -> list[Any] | None:
        """One round trip; None (and Redis marked down) if it fails or exceeds the timeout."""
        if not self.up:
            return None
        pipe = self.client.pipeline(transaction=False)
        build(pipe)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.policy.timeout):
                replies = await pipe.execute(raise_on_error=False)
        except FAILURES as exc:
            self.failed(exc)
            return None
        self.round_trips += 1
        self.round_trip_s += time.perf_counter() - started
        for reply in replies:
            if isinstance(reply, Exception):  # e.g. NOSCRIPT: Redis restarted between two calls
                self.failed(reply)
                return None
        return replies

    def failed(self, exc: BaseException) -> None:
        if not self.up:
            return
        self.up = False
        self._answers.clear()
        self.outages += 1
        self.down_since = time.time()
        self.reason = f"{type(exc).__name__}: {exc}"[:200] if str(exc) else type(exc).__name__
        log.warning(
            "shared state: Redis at %s failed (%s); this replica decides alone with its local "
            "state until Redis answers again",
            self.where,
            self.reason,
        )
        for hook in self.on_down:
            hook()

    async def _connect(self) -> bool:
        try:
            async with asyncio.timeout(self.policy.timeout * 4):
                # Idle connections to a Redis that went away are dead even if they look fine;
                # those in use fail by themselves (closing them under a user breaks it).
                await self.client.connection_pool.disconnect(inuse_connections=False)
                pipe = self.client.pipeline(transaction=False)
                for text in SCRIPTS.values():
                    pipe.script_load(text)
                loaded = await pipe.execute()
        except FAILURES as exc:
            self.reason = f"{type(exc).__name__}: {exc}"[:200]
            return False
        if loaded != list(SHA.values()):
            self.reason = "Redis answered the script loads with other hashes"
            return False
        return True

    async def run(self) -> None:
        """Background: while Redis is down, ask it again every RETRY_S; rejoin when it answers."""
        first = True
        while True:
            if not self.up and await self._connect():
                self.up = True
                self._answers.set()
                self.down_since = None
                self.reason = ""
                if first:
                    log.info("shared state: Redis at %s, replica %s", self.where, self.replica)
                else:
                    log.warning("shared state: Redis at %s answers again; rejoined", self.where)
                for hook in self.on_rejoin:
                    hook()
            elif not self.up and first:
                log.warning(
                    "shared state: Redis at %s does not answer (%s); this replica decides alone "
                    "until it does",
                    self.where,
                    self.reason,
                )
                self.outages += 1
            first = False
            await asyncio.sleep(RETRY_S)

    async def listen(self) -> None:
        """Background: the events other replicas publish (freed slots, ejections), while up."""
        while True:
            await self._answers.wait()
            pubsub = self._events_client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed = True
                async for message in pubsub.listen():
                    self._dispatch(message)
            except FAILURES as exc:
                self.failed(exc)
            finally:
                self.subscribed = False
                await pubsub.aclose()
            await asyncio.sleep(RETRY_S)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        try:
            event = orjson.loads(message["data"])
            handler = self.handlers.get(event.get("kind"))
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return
        if handler is not None:
            try:
                handler(event)
            except Exception:  # one event not understood must not end the listening
                log.exception("shared state: event %.200r not understood", message["data"])

    def publish(self, pipe: Pipeline, event: dict[str, Any]) -> None:
        pipe.publish(self.channel, orjson.dumps(event))

    async def close(self) -> None:
        await self.client.aclose()
        await self._events_client.aclose()
