"""What the proxy knows about each node: health, models on disk, models loaded, requests in flight.

The background watcher refreshes it from Ollama's own `/api/version`, `/api/tags` and `/api/ps`;
the proxy's dispatches update the in-flight counts immediately through `lease()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import orjson

from sollol_proxy.config import Config
from sollol_proxy.fleet.health import Failure, State
from sollol_proxy.fleet.node import Lease, NodeState
from sollol_proxy.fleet.peers import Peers
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.wire.gojson import timestamp_ns
from sollol_proxy.wire.headers import upstream_probe_headers
from sollol_proxy.wire.names import normalize_model

log = logging.getLogger("sollol.fleet")

# An on-demand inventory refresh (a request names a model nobody has) happens at most this often,
# so a client asking for a missing model in a loop cannot turn into a probe storm.
ON_DEMAND_REFRESH_MIN_AGE = 1.0
# Probes fall on this grid (seconds): those due within one step are sent together.
PROBE_TICK_S = 0.1


class ProbeError(Exception):
    pass


class Fleet:
    def __init__(
        self, config: Config, session: aiohttp.ClientSession, prompt_cache: PromptCache
    ) -> None:
        self._config = config
        self._session = session
        self._prompt_cache = prompt_cache
        self.nodes: dict[str, NodeState] = {n.name: NodeState(n) for n in config.nodes}
        self.peers = Peers()  # what an unmeasured node's capacity is believed to be
        for node in self.nodes.values():
            node.health.policy = config.outlier
            self.peers.join(node.beliefs)
        self._refresh_lock = asyncio.Lock()
        self._last_on_demand = 0.0
        self._rng = random.Random()

    def reconfigure(self, config: Config) -> tuple[list[NodeState], list[NodeState]]:
        """A reloaded configuration: returns the nodes (added, removed).

        Nodes are matched by name and URL: a kept node keeps its live state (in flight, loaded
        models, inventory) with its new NodeConfig. A removed node leaves `nodes` at once, so it
        takes no new request; the requests it is serving keep their own reference to it.
        """
        self._config = config
        old, nodes, added = self.nodes, {}, []
        for node_config in config.nodes:  # in configuration order: placement follows it
            state = old.get(node_config.name)
            if state is not None and state.config.url == node_config.url:
                state.config = node_config
                state.beliefs.reconfigure(node_config)
            else:
                state = NodeState(node_config)
                added.append(state)
                self.peers.join(state.beliefs)
            state.health.policy = config.outlier
            nodes[node_config.name] = state
        removed = [state for name, state in old.items() if nodes.get(name) is not state]
        for state in removed:  # should it come back, nothing it had cached is assumed
            self._prompt_cache.forget(state.name, state.models.keys() | state.loaded.keys())
            self.peers.leave(state.beliefs)
        self.nodes = nodes
        return added, removed

    # -- queries ------------------------------------------------------------------------------

    def healthy(self) -> list[NodeState]:
        """The nodes that may take new work now (a half-open node: if its trial is free)."""
        return _admitting(list(self.nodes.values()))

    def may_take(self, node: NodeState) -> bool:
        """May an attempt go to `node` now: it admits work, or no node does and it answers."""
        if node.health.admits():
            return True
        return node.healthy and not any(n.health.admits() for n in self.nodes.values())

    def with_model(self, model: str, *, healthy_only: bool = True) -> list[NodeState]:
        key = normalize_model(model)
        if healthy_only:  # in one pass when some node admits work (the usual case)
            admitted = [n for n in self.nodes.values() if key in n.models and n.health.admits()]
            if admitted:
                return admitted
        holders = [n for n in self.nodes.values() if key in n.models]
        return _admitting(holders) if healthy_only else holders

    def has_model(self, model: str) -> bool:
        """Does any node list `model`, up or not (`with_model(healthy_only=False)` is not
        empty)?"""
        key = normalize_model(model)
        return any(key in n.models for n in self.nodes.values())

    def unhealthy_summary(self, nodes: Sequence[NodeState] | None = None) -> str:
        chosen = (
            nodes
            if nodes is not None
            else [n for n in self.nodes.values() if not n.health.admits()]
        )
        return "; ".join(f"{n.name}: {_why_out(n)}" for n in chosen)

    # -- in-flight accounting -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, node: NodeState, model: str = "") -> AsyncIterator[Lease]:
        """Counts a request against the node (and its model's slots) for as long as it runs,
        or until `Lease.end()`."""
        lease = Lease(node, model)
        try:
            yield lease
        finally:
            lease.end()

    def _set_loaded(
        self, node: NodeState, loaded: dict[str, dict[str, Any]], asked_at: float
    ) -> None:
        """A fresh /api/ps answer, asked for at `asked_at`: models that left lost their cache."""
        older = {m for m, seen in node.recent.items() if seen < asked_at}
        gone = (node.loaded.keys() | older) - loaded.keys()
        if gone:
            self._prompt_cache.forget(node.name, gone)
            for model in gone:
                node.runner_options.pop(model, None)
        node.loaded = loaded
        node.beliefs.observe_ps(loaded)
        node.expires_ns = {m: timestamp_ns(item.get("expires_at")) for m, item in loaded.items()}
        # Loads that completed while the answer was on its way are not in it yet.
        node.recent = {
            m: seen for m, seen in node.recent.items() if seen >= asked_at and m not in loaded
        }
        node.changes += 1

    def mark_failed(self, node: NodeState, reason: str, kind: Failure = Failure.CONNECT) -> None:
        """A request to the node failed (the health state machine decides what that means)."""
        node.health.failed(kind, reason)
        if kind in (Failure.CONNECT, Failure.RESET):  # maybe a restart (beliefs.answered)
            node.beliefs.dropped(time.monotonic(), reason)

    def note_busy(self, node: NodeState, model: str, reason: str) -> None:
        """Ollama's queue-full 503: a cool-down, unless no other node could take the work."""
        others = [
            n
            for n in (self.with_model(model) if model else self.healthy())
            if n is not node and n.health.current() is State.UP
        ]
        node.health.busy(reason, others_available=bool(others))

    def model_missing(self, node: NodeState, model: str) -> None:
        """The node answered "model not found" for a model its inventory listed: it is gone
        from there (deleted behind the proxy's back); the next watcher tick re-reads /api/tags."""
        node.models.pop(model, None)
        node.inventory_at = None
        node.changes += 1

    # -- probing ------------------------------------------------------------------------------

    async def get_json(self, node: NodeState, path: str, timeout_s: float | None = None) -> Any:
        """A node's JSON answer to GET `path` (a probe: `health.timeout` unless given)."""
        timeout = aiohttp.ClientTimeout(
            total=self._config.health_timeout if timeout_s is None else timeout_s
        )
        try:
            async with self._session.get(
                node.config.url + path, headers=upstream_probe_headers(node.config), timeout=timeout
            ) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ProbeError(describe_error(exc)) from exc
        if resp.status != 200:
            raise ProbeError(f"GET {path} answered {resp.status}")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ProbeError(f"GET {path} answered invalid JSON") from exc

    async def refresh(self, node: NodeState, *, inventory: bool = True) -> None:
        """Probe one node; on failure it is marked unhealthy, never raised."""
        try:
            version = await self.get_json(node, "/api/version")
            asked_at = time.monotonic()
            ps = await self.get_json(node, "/api/ps")
            tags = await self.get_json(node, "/api/tags") if inventory else None
        except ProbeError as exc:
            node.failed_probes += 1
            node.health.probe_failed(str(exc))
            return
        failed, node.failed_probes = node.failed_probes, 0
        node.health.probe_ok()
        previous, node.version = node.version, str(version.get("version", "")) or None
        if failed and previous is not None:
            node.beliefs.restarted(f"the node answers again after {failed} failed probes")
        elif previous is not None and node.version != previous:
            node.beliefs.restarted(f"the node now runs version {node.version}")
        self.saw_ps(node, ps, asked_at)
        if tags is not None:
            self.saw_tags(node, tags)

    def saw_tags(self, node: NodeState, tags: Any) -> None:
        """The node's answer to /api/tags: its models on disk now."""
        node.models = _index_models(tags)
        node.inventory_at = time.monotonic()
        node.changes += 1

    def saw_ps(self, node: NodeState, ps: Any, asked_at: float) -> None:
        """The node's answer to /api/ps, asked for at `asked_at`: its models loaded now."""
        self._set_loaded(node, _index_models(ps), asked_at)

    async def refresh_all(self, *, inventory: bool = True) -> None:
        await asyncio.gather(*(self.refresh(n, inventory=inventory) for n in self.nodes.values()))

    async def refresh_for_missing_model(self) -> None:
        """A request named a model no node is known to have: maybe it was pulled behind our back."""
        async with self._refresh_lock:
            if time.monotonic() - self._last_on_demand < ON_DEMAND_REFRESH_MIN_AGE:
                return
            await self.refresh_all()
            self._last_on_demand = time.monotonic()

    def probe_delay(self, node: NodeState) -> float:
        """Seconds until the node's next probe: the interval, doubled for each failed probe in
        a row up to `health.backoff_max` (never below the interval), give or take `health.jitter` so probes spread out."""
        config = self._config
        backoff = config.health_interval * 2 ** min(node.failed_probes, 20)
        delay = max(config.health_interval, min(config.health_backoff_max, backoff))
        return delay * (1 + config.health_jitter * self._rng.uniform(-1, 1))

    async def watch(self, node: NodeState) -> None:
        """Background loop for one node: health and residency every tick, disk inventory less often.

        The first tick comes at a random point of the interval: the watchers of a large fleet
        all start together, and would otherwise probe together every interval. Ticks fall on a
        PROBE_TICK_S grid, so that the probes due within one step go out together: a probe
        costs a quarter less CPU in a small batch than alone (1,000 nodes: `bench scale`)."""
        loop = asyncio.get_running_loop()
        delay = self._config.health_interval * self._rng.random()
        while True:
            await asyncio.sleep(
                math.ceil((loop.time() + delay) / PROBE_TICK_S) * PROBE_TICK_S - loop.time()
            )
            delay = self.probe_delay(node)
            try:
                node.health.current()  # an ejection that ran out is logged now, not at next use
                due = inventory_due(
                    node.inventory_at, time.monotonic(), self._config.inventory_interval
                )
                await self.refresh(node, inventory=due or not node.healthy)
            except Exception:  # a bug here must not silently stop the watcher
                log.exception("watcher for node %s failed; retrying next tick", node.name)


def inventory_due(read_at: float | None, now: float, interval: float) -> bool:
    """Is a node's /api/tags due for a re-read? An inventory never read, or known to be out of
    date, always is: "out of date" is not a time, since the monotonic clock starts near zero at
    boot and any sentinel time could still look recent then."""
    return read_at is None or now - read_at >= interval


def _admitting(nodes: list[NodeState]) -> list[NodeState]:
    """The nodes that admit new work. When none does, the proxy panics as Envoy does rather
    than refuse work: ejections and cool-downs are cut short (a trial each), and failing that
    every node that still answers its probes is used. Only unreachable nodes are never used."""
    admitted = [n for n in nodes if n.health.admits()]
    if admitted:
        return admitted
    return [n for n in nodes if n.health.cut_short()] or [n for n in nodes if n.healthy]


def _why_out(node: NodeState) -> str:
    state = node.health.current()
    if state is State.DOWN:
        return node.last_error
    return f"{state} ({node.last_error})" if node.last_error else str(state)


def _index_models(payload: Any) -> dict[str, dict[str, Any]]:
    items = payload.get("models") if isinstance(payload, dict) else None
    index: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if isinstance(item, dict):
            name = item.get("model") or item.get("name")
            if isinstance(name, str) and name:
                index[normalize_model(name)] = item
    return index


def describe_error(exc: BaseException) -> str:
    """A short operator-facing reason for a failed upstream call."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by node"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response body cut off by node"
    text = str(exc) or type(exc).__name__
    return text
