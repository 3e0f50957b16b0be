"""The prompt-cache affinity map shared by replicas: what one replica sent to a node's slots,
every replica's map knows, so the next request with that prompt goes to the node holding it
whichever replica it reaches.

Each replica keeps its own map (`fleet/prompt_cache.PromptCache`) and collects the prompts its
requests left in a node's slots (served: the prompt's prefix keys, the node, the model, the
answer's length); every `PUSH_S` it announces them in one message, and the other replicas
replay each as "that node served this prompt" (`PromptCache.record`), which takes a slot in
their model of that runner as the node's own scheduler did. One round trip per replica per
period, none per request; what a replica misses while Redis is away stays missed (its map
corrects itself with the node's answers, as for another client's requests).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sollol_proxy.fleet.prompt_cache import PromptCache, Ticket
from sollol_proxy.shared.link import Link

PUSH_S = 0.5
MAX_BATCH = 2000  # prompts per announcement; beyond, the oldest wait for the next one


class SharedPromptCache(PromptCache):
    def __init__(self, max_roots: int = 10_000) -> None:
        super().__init__(max_roots)
        self._link: Link | None = None
        self._served: list[list[Any]] = []
        self._replaying = False
        self.replayed = 0

    def connect(self, link: Link) -> None:
        self._link = link
        link.handlers["served"] = self._replay

    def finish(
        self,
        ticket: Ticket,
        *,
        answer: int = 0,
        served: bool = True,
        prompt_count: int = 0,
        observed: int | None = None,
        ratio: float = 1.0,
        now: float | None = None,
    ) -> None:
        super().finish(
            ticket,
            answer=answer,
            served=served,
            prompt_count=prompt_count,
            observed=observed,
            ratio=ratio,
            now=now,
        )
        take = ticket.take
        if served and take.keys and not self._replaying and self._link is not None:
            keys = [[key.hex(), tokens] for key, tokens in take.keys]
            self._served.append([ticket.node, ticket.model, len(take.runner.slots), answer, keys])

    def _replay(self, event: dict[str, Any]) -> None:
        if self._link is None or event.get("replica") == self._link.replica:
            return
        self._replaying = True
        try:
            for node, model, slots, answer, keys in event.get("served", []):
                prefix = [(bytes.fromhex(key), int(tokens)) for key, tokens in keys]
                self.record(model, node, prefix, max(1, int(slots)), int(answer))
                self.replayed += 1
        finally:
            self._replaying = False

    async def run(self) -> None:
        """Background: announce the prompts this replica's requests left in the nodes' slots."""
        link = self._link
        assert link is not None
        while True:
            await asyncio.sleep(PUSH_S)
            if not self._served:
                continue
            served = self._served[-MAX_BATCH:]
            self._served = []
            event = {"kind": "served", "replica": link.replica, "served": served}
            await link.pipeline(lambda pipe, e=event: link.publish(pipe, e))
