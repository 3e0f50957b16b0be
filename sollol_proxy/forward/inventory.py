"""The fleet's lists read live, for the fleet views: what every reachable node holds on disk
(`/api/tags`) or has loaded (`/api/ps`) now.

A view asks every reachable node at once, each bounded by `inventory.view_timeout`; a node that
does not answer in time contributes its last known list, and the view says which did. What the
nodes answer refreshes the routing inventory too. Views of one kind asked for while a read is
under way share it, so clients polling `/api/tags` cannot multiply the load on the nodes;
`invalidate()` (a management call changed the nodes) makes the next view start a fresh read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from sollol_proxy.config import Config
from sollol_proxy.fleet.fleet import Fleet, ProbeError
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.lifecycle.background import Background

TAGS = "/api/tags"
PS = "/api/ps"


@dataclass(frozen=True, slots=True)
class Gathered:
    """One live read of the fleet: each reachable node's list, in configuration order."""

    lists: tuple[dict[str, dict[str, Any]], ...]  # normalized model name -> the node's own item
    answered: tuple[str, ...]  # nodes that answered within the view timeout
    stale: tuple[tuple[str, str], ...]  # (node, why): its last known list stands in


class LiveInventory:
    def __init__(self, config: Config, fleet: Fleet, tasks: Background) -> None:
        self._fleet = fleet
        self._tasks = tasks
        self._reads: dict[str, asyncio.Task[Gathered]] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self._timeout = config.inventory_view_timeout

    def invalidate(self) -> None:
        """The nodes changed: views asked for from now on do not join a read already going."""
        self._reads.clear()

    async def read(self, path: str) -> Gathered:
        """`TAGS` or `PS` of every reachable node, live where it answers in time."""
        task = self._reads.get(path)
        if task is None:
            task = self._tasks.start(f"view:{path}", self._gather(path))
            self._reads[path] = task
            task.add_done_callback(lambda done: self._finished(path, done))
        # A client that leaves does not cancel the read the others wait for.
        return await asyncio.shield(task)

    def _finished(self, path: str, task: asyncio.Task[Gathered]) -> None:
        if self._reads.get(path) is task:
            del self._reads[path]

    async def _gather(self, path: str) -> Gathered:
        nodes = [n for n in self._fleet.nodes.values() if n.healthy]
        failures = await asyncio.gather(*(self._ask(node, path) for node in nodes))
        return Gathered(
            lists=tuple(node.models if path == TAGS else node.loaded for node in nodes),
            answered=tuple(n.name for n, why in zip(nodes, failures, strict=True) if why is None),
            stale=tuple(
                (n.name, why) for n, why in zip(nodes, failures, strict=True) if why is not None
            ),
        )

    async def _ask(self, node: NodeState, path: str) -> str | None:
        """Read one node's list into the fleet's state; why it failed, or None."""
        asked_at = time.monotonic()
        try:
            payload = await self._fleet.get_json(node, path, self._timeout)
        except ProbeError as exc:
            # Its health is the watcher's to judge: a view's short timeout is no probe.
            return str(exc)
        if path == TAGS:
            self._fleet.saw_tags(node, payload)
        else:
            self._fleet.saw_ps(node, payload, asked_at)
        return None
