"""The decision log behind /sollol/decisions, shared by replicas: any replica shows the latest
decisions of all of them.

Each replica keeps its own log as before and, once a second, pushes the decisions it made
since (as they stand then: `served_by` and `queue_s` are filled in by then for most requests)
to one Redis list, trimmed to `routing.decisions_kept`; each entry says which `replica` made
it. The list is read back, in the same round trip, only while someone reads the decisions
here (`/sollol/decisions`, the dashboard: in the last `WATCHED_S`), and an entry is decoded
only when shown, so an unwatched replica pays for the push alone. While Redis does not answer,
or before the first read back, the log is this replica's own. The cost is one round trip per
replica per second, none per request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from redis.asyncio.client import Pipeline

from sollol_proxy.fleet.decisions import Decision, DecisionLog
from sollol_proxy.shared.link import Link

PUSH_S = 1.0
WATCHED_S = 30.0


class SharedDecisionLog(DecisionLog):
    def __init__(self, keep: int, link: Link) -> None:
        super().__init__(keep)
        self._link = link
        self._keep = keep
        self._new: list[Decision] = []
        self._merged: list[bytes] | None = None  # newest first, as last read, still encoded
        self._watched = -WATCHED_S

    def resize(self, keep: int) -> None:
        super().resize(keep)
        self._keep = keep

    def add(self, decision: Decision) -> None:
        super().add(decision)
        if self._keep:
            self._new.append(decision)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        self._watched = time.monotonic()
        if not self._link.up or self._merged is None:
            return super().recent(limit)
        return [orjson.loads(raw) for raw in self._merged[:limit]] if limit > 0 else []

    def _push(self, pipe: Pipeline, new: list[Decision], read: bool) -> None:
        key = self._link.key("decisions")
        if new:
            replica = self._link.replica
            pipe.lpush(key, *(orjson.dumps({**d.to_json(), "replica": replica}) for d in new))
            pipe.ltrim(key, 0, max(self._keep - 1, 0))
        if read:
            pipe.lrange(key, 0, max(self._keep - 1, 0))

    async def run(self) -> None:
        """Background: push this replica's new decisions, read everyone's."""
        while True:
            await asyncio.sleep(PUSH_S)
            new, self._new = self._new[-self._keep :] if self._keep else [], []
            read = time.monotonic() - self._watched < WATCHED_S
            if not read:
                self._merged = None  # unwatched: a later reader sees this replica's log first
            if not new and not read:
                continue
            replies = await self._link.pipeline(lambda pipe, n=new, r=read: self._push(pipe, n, r))
            if replies is None:
                self._merged = None
            elif read:
                self._merged = replies[-1]
