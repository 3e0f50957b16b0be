"""Soak: sustained load through the real proxy while simulated nodes misbehave at random.

Simulated nodes, the proxy and the clients share one process (so that the proxy's in-flight
counts and upstream connections can be read directly). A fault injector keeps toggling random
faults on random nodes, at most all but one node at a time, so every request that fails before
its first byte has somewhere else to go. At the end the faults are cleared, the load stops,
and the proxy must come back to nothing in flight, no upstream connection in use, and every
node up again. Memory is the process's RSS after warm-up against the end (the simulated nodes'
request logs are cleared as it runs, so that they do not count as growth).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from typing import Any

import aiohttp

from sollol_proxy.app import ADMISSION, FLEET, FORWARDER, SESSION
from sollol_proxy.bench.soak_report import Report, outcome, rss_mib, status_reason
from sollol_proxy.config import load_config
from sollol_proxy.server import RunningProxy, start_proxy
from sollol_proxy.simulator import Faults, SimulatedNode

MODEL = "llama3.2:latest"
BUSY = "server busy, please try again.  maximum pending requests exceeded"
CLIENT_TIMEOUT = 30.0

# Each fault with what it does to a node; "kill" stops the node and restarts it on its port.
FAULTS = (
    "kill",
    "refuse",
    "reset_before_headers",
    "reset_after_chunks",
    "hang_before_first_byte",
    "stall_mid_stream",
    "status_500",
    "busy_503",
)

SETTINGS: dict[str, Any] = {
    "listen.host": "127.0.0.1",
    "listen.port": 0,
    "routing.strategy": "least_loaded",
    "timeouts.connect": 1.0,
    "timeouts.first_byte": 2.0,
    "timeouts.non_streamed": 4.0,
    "timeouts.idle_read": 1.0,
    "health.interval": 0.5,
    "health.timeout": 1.0,
    "health.backoff_max": 2.0,
    "inventory.interval": 5.0,
    "outlier.base_ejection": 1.0,
    "outlier.max_ejection": 10.0,
    "outlier.busy_cooldown": 0.5,
}

# (path, body, kind of answer)
REQUESTS: tuple[tuple[str, bytes, str], ...] = (
    (
        "/api/chat",
        b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":24}}',
        "ndjson",
    ),
    (
        "/api/generate",
        b'{"model":"llama3.2","prompt":"hi","options":{"num_predict":24}}',
        "ndjson",
    ),
    (
        "/api/chat",
        b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false,'
        b'"options":{"num_predict":24}}',
        "json",
    ),
    (
        "/v1/chat/completions",
        b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true,'
        b'"max_tokens":24}',
        "sse",
    ),
)


class _StateChanges(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class _Soak:
    def __init__(self, nodes: list[SimulatedNode], proxy: RunningProxy, rng: random.Random):
        self.nodes = nodes
        self.proxy = proxy
        self.rng = rng
        self.faulted: dict[str, str] = {}
        self.ports = {n.name: n.port for n in nodes}
        self.stopping = asyncio.Event()

    async def client(self, http: aiohttp.ClientSession, report: Report) -> None:
        while not self.stopping.is_set():
            path, body, kind = self.rng.choice(REQUESTS)
            report.requests += 1
            try:
                async with asyncio.timeout(CLIENT_TIMEOUT):
                    async with http.post(self.proxy.url + path, data=body) as response:
                        data = await response.read()
                        route = response.headers.get("X-Sollol-Route", "")
                failure = outcome(kind, response.status, data)
            except TimeoutError:
                failure = "client timeout"
            except (aiohttp.ClientError, OSError, ValueError):
                failure = "cut"
            if failure is None:
                report.successes += 1
                report.retried_successes += "(after " in route
            else:
                report.failures[failure] += 1
                if failure.startswith("status "):
                    report.statuses[status_reason(data)] += 1
                # As the SDKs do (ollama-python does not; openai-python backs off 0.5-8 s).
                await asyncio.sleep(self.rng.uniform(0.1, 0.5))

    async def _apply(self, node: SimulatedNode, fault: str) -> None:
        faults = node.faults
        if fault == "kill":
            await node.stop()
        elif fault == "refuse":
            faults.refuse = True
        elif fault == "reset_before_headers":
            faults.reset_before_headers = True
        elif fault == "reset_after_chunks":
            faults.reset_after_chunks = self.rng.randint(1, 6)
        elif fault == "hang_before_first_byte":
            faults.first_byte_delay = 60.0
        elif fault == "stall_mid_stream":
            faults.stall_after_chunks = self.rng.randint(1, 6)
        elif fault == "status_500":
            faults.status_error = (500, "an error was encountered while running the model")
        else:
            faults.status_error = (503, BUSY)

    async def _clear(self, node: SimulatedNode) -> None:
        fault = self.faulted.pop(node.name)
        if fault == "kill":
            await node.start(port=self.ports[node.name])
        else:
            node.faults = Faults()

    async def inject(self, report: Report, every: float) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * every)
            node = self.rng.choice(self.nodes)
            if node.name in self.faulted:
                await self._clear(node)
            elif len(self.faulted) < len(self.nodes) - 1:
                fault = self.rng.choice(FAULTS)
                self.faulted[node.name] = fault
                report.faults_injected[fault] += 1
                await self._apply(node, fault)
            for sim in self.nodes:  # the simulator's request logs are test aids, not state
                sim.requests.clear()
                sim.responses.clear()

    async def clear_all(self) -> None:
        for node in self.nodes:
            if node.name in self.faulted:
                await self._clear(node)


async def soak(
    duration: float = 60.0,
    nodes: int = 4,
    clients: int = 16,
    seed: int = 1,
    fault_every: float = 1.0,
    token_delay: float = 0.005,
) -> Report:
    rng = random.Random(seed)
    sims = [
        SimulatedNode(name=f"n{i}", models=[MODEL], num_parallel=4, token_delay=token_delay)
        for i in range(nodes)
    ]
    for sim in sims:
        await sim.start()
    overrides = {
        **SETTINGS,
        # Names for the report; the slots (4 per node) are the proxy's to learn.
        "nodes": [{"url": s.url, "name": s.name} for s in sims],
        # Up to all nodes but one are faulted at once: every node may be needed to find it.
        "routing.max_attempts": nodes,
    }
    proxy = await start_proxy(load_config(None, env={}, overrides=overrides))
    app = proxy.runner.app
    fleet, forwarder = app[FLEET], app[FORWARDER]
    changes = _StateChanges()
    health_log = logging.getLogger("sollol.health")
    health_log.addHandler(changes)
    report = Report(duration, nodes, clients)
    run = _Soak(sims, proxy, rng)
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        ) as http:
            tasks = [asyncio.create_task(run.client(http, report)) for _ in range(clients)]
            tasks.append(asyncio.create_task(run.inject(report, fault_every)))
            await asyncio.sleep(min(5.0, duration / 10))
            gc.collect()
            report.rss_start_mib = rss_mib()
            await asyncio.sleep(duration - min(5.0, duration / 10))
            run.stopping.set()
            await asyncio.wait(tasks, timeout=CLIENT_TIMEOUT + 5)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in results if isinstance(r, Exception)]
            if errors:
                raise errors[0]
            await run.clear_all()
            await _quiesce(fleet, sims, http, proxy.url, app[SESSION])
        gc.collect()
        report.rss_end_mib = rss_mib()
        _final_counts(report, fleet, sims, app[SESSION], forwarder)
        report.leaked_slots = sum(
            sum(models.values()) for models in app[ADMISSION].slots.all_in_use().values()
        )
        report.still_queued = app[ADMISSION].waiting
        report.state_changes = changes.count
    finally:
        health_log.removeHandler(changes)
        await proxy.stop()
        for sim in sims:
            await sim.stop()
    return report


async def _quiesce(
    fleet: Any,
    sims: list[SimulatedNode],
    http: aiohttp.ClientSession,
    url: str,
    upstream: aiohttp.ClientSession,
) -> None:
    """Wait until nothing is in flight (a health probe in flight holds a node connection for a
    moment: not a leak) and every node is back up, for at most 20 s.

    An ejected node comes back through a trial request, so while one is not up yet a small
    request goes through the proxy every tick (their answers are not part of the report)."""
    deadline = time.monotonic() + 20.0
    body = b'{"model":"llama3.2","prompt":"x","stream":false,"options":{"num_predict":1}}'
    while time.monotonic() < deadline:
        busy = any(n.in_flight or n.model_in_flight for n in fleet.nodes.values())
        busy = busy or any(s.in_flight() for s in sims)
        busy = busy or bool(getattr(upstream.connector, "_acquired", ()))
        down = [n for n in fleet.nodes.values() if n.health.current() != "up"]
        if not busy and not down:
            return
        if down:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with asyncio.timeout(CLIENT_TIMEOUT):
                    async with http.post(url + "/api/generate", data=body) as response:
                        await response.read()
        await asyncio.sleep(0.2)


def _final_counts(
    report: Report,
    fleet: Any,
    sims: list[SimulatedNode],
    session: aiohttp.ClientSession,
    forwarder: Any,
) -> None:
    for node in fleet.nodes.values():
        report.leaked_in_flight += (
            node.in_flight
            + sum(node.model_in_flight.values())
            + sum(node.loading.values())
            + sum(node.evicting.values())
        )
        counters = node.health.counters
        report.ejections += counters.ejections
        report.retries += counters.retries
        report.mid_stream_failures += counters.mid_stream_failures
        if node.health.current() != "up":
            report.nodes_not_up.append(f"{node.name} ({node.health.current()})")
    report.node_in_flight = sum(s.in_flight() for s in sims)
    report.retries_refused = forwarder.budget.refused
    connector = session.connector
    acquired = getattr(connector, "_acquired", ())
    pooled = getattr(connector, "_conns", {})
    report.connections_in_use = len(acquired)
    report.connections_idle = sum(len(v) for v in pooled.values())


def run(duration: float, nodes: int, clients: int, seed: int) -> Report:
    for name in ("sollol.proxy", "sollol.health", "sollol.fleet", "aiohttp"):
        logging.getLogger(name).setLevel(logging.ERROR if name != "sollol.health" else logging.INFO)
    logging.getLogger("sollol.health").propagate = False  # counted, not printed
    report = asyncio.run(soak(duration=duration, nodes=nodes, clients=clients, seed=seed))
    print("\n".join(report.lines()))
    return report
