"""Replicas of the proxy sharing state in a real redis-server, in front of simulated nodes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sollol_proxy.app import ADMISSION, FLEET, PROXY
from sollol_proxy.config import load_config
from sollol_proxy.server import RunningProxy, start_proxy
from sollol_proxy.shared.state import SharedState
from sollol_proxy.simulator import SimulatedNode
from tests.conftest import TEST_SETTINGS, eventually
from tests.redisd import RedisServer


@dataclass
class Replicas:
    proxies: list[RunningProxy]
    nodes: list[SimulatedNode]
    redis: RedisServer

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.proxies]

    def shared(self, index: int) -> SharedState:
        shared = self.proxies[index].runner.app[PROXY].shared
        assert shared is not None
        return shared

    def fleet(self, index: int) -> Any:
        return self.proxies[index].runner.app[FLEET]

    def admission(self, index: int) -> Any:
        return self.proxies[index].runner.app[ADMISSION]


ReplicasFactory = Callable[..., Awaitable[Replicas]]


def node_entry(node: SimulatedNode, spec: dict[str, Any]) -> dict[str, Any] | str:
    if "num_parallel" in spec and spec.get("told", True):
        return {"url": node.url, "name": node.name, "num_parallel": spec["num_parallel"]}
    return node.url


@pytest.fixture
async def replicas(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[ReplicasFactory]:
    """`await replicas(3, dict(name="a", models=[...], num_parallel=2), **settings)`: that many
    proxies, one process, the same nodes and the same Redis (`state.redis_url`)."""
    started: list[Replicas] = []

    async def make(count: int, *node_specs: dict[str, Any], **settings: Any) -> Replicas:
        nodes = []
        for spec in node_specs:
            options = {k: v for k, v in spec.items() if k != "told"}
            node = SimulatedNode(**{"deterministic": True, **options})
            await node.start(port=0)
            nodes.append(node)
        overrides = {
            **TEST_SETTINGS,
            "batch.data_dir": str(tmp_path / "sollol-data"),
            "state.redis_url": redis_server.url,
            # The replicas share this test's one event loop: a slow turn of it is not Redis
            # failing (tests/shared/test_failures.py stops Redis itself).
            "state.timeout": 2.0,
            "nodes": [node_entry(n, s) for n, s in zip(nodes, node_specs, strict=True)],
            **{k.replace("__", "."): v for k, v in settings.items()},
        }
        proxies = []
        for _ in range(count):
            proxies.append(await start_proxy(load_config(None, env={}, overrides=overrides)))
        made = Replicas(proxies, nodes, redis_server)
        started.append(made)
        for index in range(count):
            await until(lambda i=index: made.shared(i).link.subscribed)
        return made

    yield make
    for made in started:
        for proxy in made.proxies:
            await proxy.stop()
        for node in made.nodes:
            await node.stop()


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    await eventually(condition, within)


class Peak:
    """The most requests a simulated node ran at once, sampled every 2 ms while in use."""

    def __init__(self, nodes: list[SimulatedNode]) -> None:
        self.nodes = nodes
        self.peak = {n.name: 0 for n in nodes}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Peak:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _watch(self) -> None:
        while True:
            for node in self.nodes:
                self.peak[node.name] = max(self.peak[node.name], node.in_flight())
            await asyncio.sleep(0.002)


async def idle(made: Replicas, within: float = 3.0) -> None:
    """Once the requests are over, Redis counts no slot held on any node (every lease back)."""
    client = made.shared(0).link.client
    deadline = asyncio.get_running_loop().time() + within
    while True:
        held = [
            int(v)
            for key in [k async for k in client.scan_iter("*slots:*")]
            for v in (await client.hgetall(key)).values()
        ]
        if sum(held) == 0:
            return
        if asyncio.get_running_loop().time() >= deadline:
            state = {
                key.decode(): await client.hgetall(key)
                async for key in client.scan_iter("*")
                if b"slots:" in key or b"hand:" in key
            }
            mine = [made.shared(i).slots.leases.mine for i in range(len(made.proxies))]
            raise AssertionError(f"leases left in Redis: {state}; the replicas count {mine}")
        await asyncio.sleep(0.05)
