"""Real sockets everywhere: simulated Ollama nodes on 127.0.0.1 ports and the real proxy in front."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sollol_proxy.config import Config, load_config
from sollol_proxy.server import RunningProxy, start_proxy
from sollol_proxy.simulator import SimulatedNode
from tests.redisd import RedisServer

# Fast background loops so tests see health changes quickly; still long enough not to spin.
TEST_SETTINGS: dict[str, Any] = {
    "listen.host": "127.0.0.1",
    "listen.port": 0,
    "health.interval": 0.2,
    "health.timeout": 1.0,
    "health.backoff_max": 1.0,  # a node that comes back is seen within about a second
    "inventory.interval": 0.5,
    "timeouts.connect": 1.0,
}


@pytest.fixture(autouse=True, scope="session")
def _state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Batch jobs are stored under $XDG_STATE_HOME by default: a temporary one for the whole
    run (proxy processes the tests start inherit it), never the developer's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield


@dataclass
class Cluster:
    proxy: RunningProxy
    nodes: list[SimulatedNode]
    config: Config
    extra: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.proxy.url

    def node(self, name: str) -> SimulatedNode:
        return next(n for n in self.nodes if n.name == name)

    @property
    def fleet(self) -> Any:
        from sollol_proxy.app import FLEET

        return self.proxy.runner.app[FLEET]


ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    """`await cluster(dict(name="a", models=[...]), ..., **config_overrides)`; with
    `urls_only=True` the proxy is given the nodes' URLs and nothing else (zero configuration);
    the proxies of one test share a batch-job store."""
    started: list[Cluster] = []

    async def make(
        *node_specs: dict[str, Any], urls_only: bool = False, **settings: Any
    ) -> Cluster:
        nodes = []
        for spec in node_specs:
            spec = {"deterministic": True, **spec}
            node = SimulatedNode(**spec)
            await node.start(port=0)
            nodes.append(node)
        overrides = {
            **TEST_SETTINGS,
            "batch.data_dir": str(tmp_path / "sollol-data"),
            "nodes": [
                n.url if urls_only else _node_config(n, spec)
                for n, spec in zip(nodes, node_specs, strict=True)
            ],
            **{k.replace("__", "."): v for k, v in settings.items()},
        }
        config = load_config(None, env={}, overrides=overrides)
        proxy = await start_proxy(config)
        made = Cluster(proxy, nodes, config)
        started.append(made)
        return made

    yield make
    for made in started:
        await made.proxy.stop()
        for node in made.nodes:
            await node.stop()


def _node_config(node: SimulatedNode, spec: dict[str, Any]) -> dict[str, Any]:
    """What an operator would write in sollol.yaml for this node."""
    config = {"url": node.url, "name": node.name, "num_parallel": spec.get("num_parallel", 1)}
    if "max_loaded_models" in spec:
        config["max_loaded_models"] = spec["max_loaded_models"]
    if "vram_bytes" in spec:
        config["vram"] = spec["vram_bytes"]
    return config


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A raw HTTP client that leaves bytes alone."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until `condition()` holds; fail the test if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.05)


def chromium() -> str:
    """Debian's chromium, for the tests that run a page in a real browser. Without it they skip
    and say why, so that the suite passes on any machine; in CI (`CI=true`, which `.ci/run` sets
    after installing it) a missing browser is a failure instead."""
    path = shutil.which("chromium")
    if path is None:
        reason = "chromium is not installed, so the browser tests cannot run (.ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true: that is a failure there")
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a process that binds it later. Taken below the kernel's
    ephemeral range, which every outgoing connection and every bind to port 0 draws from: from
    there, one of the many connections the suite opens meanwhile could take it first."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(max(low - 12_000, 1024), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use: another
            return port
    raise AssertionError(f"no free port below {low} in 100 tries")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server for this test alone (see tests/redisd.py)."""
    server = RedisServer(tmp_path, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
