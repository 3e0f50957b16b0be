"""Ejections shared by replicas: a node one replica takes out is avoided by all.

When a node leaves rotation here with an end time (ejected for failing, or dropped out while
in use), the ejection is written to the `ejections` hash (node -> end, reason, replica; wall
clock) and announced; the other replicas apply what is left of it at once
(`NodeHealth.ejected_elsewhere`), and any replica that missed the announcement (Redis was
away, or it started later) reads the hash at every probe interval. Recovery stays each
replica's own: after the ejection, its trial request decides, as for an ejection of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio.client import Pipeline

from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.health import State
from sollol_proxy.shared.link import Link

Listener = Callable[[str, State, State], None]


class SharedHealth:
    def __init__(self, link: Link, fleet: Fleet, interval: Callable[[], float]) -> None:
        self._link = link
        self._fleet = fleet
        self._interval = interval  # the probe interval, read live (reloads)
        self._applying = False
        self._pending: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self.applied = 0
        link.handlers["eject"] = self._apply
        link.on_rejoin.append(self._wake.set)

    def listening(self, inner: Listener) -> Listener:
        """The node's state listener, also telling the other replicas of an ejection."""

        def listener(name: str, previous: State, new: State) -> None:
            inner(name, previous, new)
            if self._applying or new not in (State.EJECTED, State.DOWN):
                return
            node = self._fleet.nodes.get(name)
            if node is None:
                return
            remaining = node.health.until - node.health.clock()
            if remaining > 0:
                self._pending[name] = {
                    "kind": "eject",
                    "node": name,
                    "until": time.time() + remaining,
                    "reason": node.health.reason[:200],
                    "replica": self._link.replica,
                }
                self._wake.set()

        return listener

    def _apply(self, event: dict[str, Any]) -> None:
        name, until = event.get("node"), event.get("until")
        if event.get("replica") == self._link.replica or not isinstance(until, int | float):
            return
        node = self._fleet.nodes.get(name) if isinstance(name, str) else None
        if node is None:
            return
        remaining = until - time.time()
        before = node.health.state
        self._applying = True
        try:
            node.health.ejected_elsewhere(
                remaining, f"ejected by replica {event.get('replica')}: {event.get('reason')}"
            )
        finally:
            self._applying = False
        self.applied += node.health.state is not before

    def _tell(self, pipe: Pipeline, pending: dict[str, dict[str, Any]]) -> None:
        key = self._link.key("ejections")
        for name, event in pending.items():
            pipe.hset(key, name, orjson.dumps(event))
            self._link.publish(pipe, event)
        pipe.hgetall(key)

    async def run(self) -> None:
        """Background: publish this replica's ejections; read everyone's every probe interval."""
        key = self._link.key("ejections")
        while True:
            try:
                async with asyncio.timeout(self._interval()):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            pending, self._pending = self._pending, {}
            replies = await self._link.pipeline(lambda pipe, told=pending: self._tell(pipe, told))
            if replies is None:
                self._pending = {**pending, **self._pending}  # told when Redis is back
                continue
            now = time.time()
            for name, raw in replies[-1].items():
                try:
                    event = orjson.loads(raw)
                    over = float(event["until"]) <= now
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    over = True  # not ours to read: dropped
                if over:
                    await self._link.pipeline(lambda pipe, n=name: pipe.hdel(key, n))
                else:
                    self._apply(event)
