"""Speeds learned by one replica, known to all: a replica that has measured nothing of a node
and model (a new replica in a rolling update, or one the balancer sent no such request yet)
takes what the others measured, as one sample, instead of the priors; its own measurements
follow from there (`Learner.adopt`).

Every `PUSH_S` each replica writes what it measured itself (`Learner.measured`: prefill and
decode speeds, load time, time to first token, service time per node and model) to one Redis
hash, under its replica id with the time, and reads the others' back; entries older than a
minute (a replica gone) are ignored. One round trip per replica per period, none per request.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import Any

import orjson
from redis.asyncio.client import Pipeline

from sollol_proxy.fleet.learning import Learner
from sollol_proxy.shared.link import Link

log = logging.getLogger("sollol.shared")

PUSH_S = 2.0
STALE_S = 60.0


class SharedLearning:
    def __init__(self, link: Link, learner: Learner) -> None:
        self._link = link
        self._learner = learner
        self.adopted = 0

    def _exchange(self, pipe: Pipeline) -> None:
        key = self._link.key("learned")
        pairs = [[n, m, values] for (n, m), values in self._learner.measured().items()]
        pipe.hset(key, self._link.replica, orjson.dumps({"at": time.time(), "pairs": pairs}))
        pipe.hgetall(key)

    def merge(self, entries: dict[bytes, bytes]) -> None:
        """Adopt the mean of the other live replicas' values where this one has none."""
        now = time.time()
        heard: dict[tuple[str, str, str], list[float]] = {}
        for replica, raw in entries.items():
            if replica.decode(errors="replace") == self._link.replica:
                continue
            entry: dict[str, Any] = orjson.loads(raw)
            if now - float(entry.get("at", 0)) > STALE_S:
                continue
            for node, model, values in entry.get("pairs", []):
                for name, value in values.items():
                    heard.setdefault((node, model, name), []).append(float(value))
        for (node, model, name), values in heard.items():
            self.adopted += self._learner.adopt(node, model, name, statistics.fmean(values))

    async def run(self) -> None:
        """Background: publish what this replica measured, adopt what the others did."""
        while True:
            await asyncio.sleep(PUSH_S)
            replies = await self._link.pipeline(self._exchange)
            if replies is None:
                continue
            try:
                self.merge(replies[-1])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                log.warning("shared state: learned speeds in Redis not understood; ignored")
