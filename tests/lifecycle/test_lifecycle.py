"""Process lifecycle with the real CLI: SIGTERM drains, SIGHUP reloads, a bad reload is refused.

The proxy runs as `python -m sollol_proxy -c <yaml>`; the simulated nodes run in the test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sollol_proxy.app import ADMIN, ADMISSION, PROXY, apply_config
from sollol_proxy.config import load_config
from sollol_proxy.simulator import SimulatedNode
from tests.conftest import TEST_SETTINGS, ClusterFactory, eventually, free_port

MODEL = "llama3.2:latest"


class ProxyProcess:
    def __init__(self, tmp_path: Path, nodes: list[SimulatedNode], **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = tmp_path / "sollol.yaml"
        self.log_path = tmp_path / "proxy.log"
        self.settings = settings
        self.write(nodes)
        self.process: asyncio.subprocess.Process | None = None

    def write(self, nodes: list[SimulatedNode], text: str | None = None) -> None:
        config = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "nodes": [{"url": n.url, "name": n.name} for n in nodes],
            "health": {"interval": "0.2s", "timeout": "1s"},
            "inventory": {"interval": "0.5s"},
            **self.settings,
        }
        self.config_path.write_text(text if text is not None else yaml.safe_dump(config))

    async def start(self) -> None:
        # A file, not a pipe: nobody reads the log while the proxy runs, a full pipe would block it.
        log = self.log_path.open("wb")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sollol_proxy",
            "-c",
            str(self.config_path),
            stdout=log,
            stderr=log,
        )
        log.close()
        async with aiohttp.ClientSession() as http:
            for _ in range(400):
                try:
                    async with http.get(self.url + "/sollol/nodes") as response:
                        nodes = orjson.loads(await response.read())["nodes"]
                        if all(n["healthy"] for n in nodes):
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"the proxy never came up:\n{self.log()}")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), 30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def generation(self, http: aiohttp.ClientSession) -> int:
        async with http.get(self.url + "/sollol/nodes") as response:
            return int(orjson.loads(await response.read())["config"]["generation"])


@pytest.fixture
async def nodes() -> AsyncIterator[list[SimulatedNode]]:
    started = [
        SimulatedNode(name=name, models=[MODEL], deterministic=True, token_delay=0.05)
        for name in ("a", "b", "c")
    ]
    for node in started:
        await node.start(port=0)
    yield started
    for node in started:
        await node.stop()


@pytest.fixture
async def running() -> AsyncIterator[list[ProxyProcess]]:
    processes: list[ProxyProcess] = []
    yield processes
    for proxy in processes:
        if proxy.process is not None and proxy.process.returncode is None:
            proxy.process.kill()
            await proxy.process.wait()


def _generate(tokens: int) -> bytes:
    return orjson.dumps(
        {"model": "llama3.2", "prompt": "hello", "options": {"num_predict": tokens}}
    )


async def _answer(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, bytes]:
    async with http.post(url + "/api/generate", data=body) as response:
        return response.status, await response.read()


async def _refused(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as fresh, fresh.get(url + "/api/version"):
            return False
    except aiohttp.ClientConnectionError:
        return True


async def test_sigterm_lets_a_stream_in_flight_finish_and_refuses_new_connections(
    tmp_path: Path, nodes: list[SimulatedNode], running: list[ProxyProcess]
) -> None:
    proxy = ProxyProcess(tmp_path, nodes[:1], shutdown={"grace": "30s"})
    running.append(proxy)
    await proxy.start()
    async with (
        aiohttp.ClientSession() as http,
        http.post(proxy.url + "/api/generate", data=_generate(40)) as response,
    ):
        first = await response.content.readline()  # the stream is under way (~2 s long)
        proxy.signal(signal.SIGTERM)
        await eventually(lambda: "draining 1 request(s)" in proxy.log(), within=10)
        assert await _refused(proxy.url)
        lines = [first, *[line async for line in response.content]]
    generated = [r for r in nodes[0].responses if r.path == "/api/generate"]
    assert b"".join(lines) == generated[-1].body and generated[-1].complete  # byte-complete
    assert len(lines) == 41 and orjson.loads(lines[-1])["done"] is True
    assert await proxy.wait() == 0
    assert "shutdown: 1 request(s) finished, 0 cut" in proxy.log()


async def test_a_stream_longer_than_the_grace_period_ends_with_the_proxy_error(
    tmp_path: Path, nodes: list[SimulatedNode], running: list[ProxyProcess]
) -> None:
    proxy = ProxyProcess(tmp_path, nodes[:1], shutdown={"grace": "0.5s"})
    running.append(proxy)
    await proxy.start()
    async with (
        aiohttp.ClientSession() as http,
        http.post(proxy.url + "/api/generate", data=_generate(400)) as response,
    ):
        await response.content.readline()
        proxy.signal(signal.SIGTERM)
        lines = [line async for line in response.content]
    assert orjson.loads(lines[-1]) == {
        "error": "sollol-proxy is shutting down; the response is incomplete"
    }
    assert all("done" in orjson.loads(line) for line in lines[:-1])
    assert await proxy.wait() == 0
    assert "shutdown: 0 request(s) finished, 1 cut by the 0.5s grace period" in proxy.log()
    await eventually(lambda: nodes[0].in_flight() == 0)  # the node's generation was cancelled


async def test_sighup_adds_and_removes_nodes_under_load_without_a_failed_request(
    tmp_path: Path, nodes: list[SimulatedNode], running: list[ProxyProcess]
) -> None:
    a, b, c = nodes
    proxy = ProxyProcess(tmp_path, [a, b], routing={"strategy": "round_robin"})
    running.append(proxy)
    await proxy.start()
    failures: list[str] = []
    served: dict[str, int] = {}
    stop = asyncio.Event()

    async def client(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with http.post(proxy.url + "/api/generate", data=_generate(8)) as response:
                lines = [orjson.loads(line) async for line in response.content]
                node = response.headers.get("X-Sollol-Node", "?")
                if response.status != 200 or not lines[-1].get("done"):
                    failures.append(f"{node}: {response.status} {lines[-1]}")
                served[node] = served.get(node, 0) + 1

    async with aiohttp.ClientSession() as http:
        load = [asyncio.create_task(client(http)) for _ in range(4)]
        try:
            await eventually(lambda: served.get("a", 0) > 2 and served.get("b", 0) > 2, 20)
            proxy.write([a, c])  # b leaves, c joins
            proxy.signal(signal.SIGHUP)
            await eventually(lambda: "configuration generation 2 in force" in proxy.log(), 10)
            before = dict(served)
            await eventually(lambda: served.get("c", 0) > 2, 20)
            assert await proxy.generation(http) == 2
            await eventually(lambda: "node b has left the fleet" in proxy.log(), 10)
            # Requests that went to b before the reload may finish after it; none start there.
            assert served.get("b", 0) - before.get("b", 0) <= 4
            async with http.get(proxy.url + "/sollol/nodes") as response:
                names = [n["name"] for n in orjson.loads(await response.read())["nodes"]]
            assert names == ["a", "c"]
        finally:
            stop.set()
            await asyncio.gather(*load)
    assert failures == []
    proxy.signal(signal.SIGTERM)
    assert await proxy.wait() == 0


async def test_an_invalid_config_on_sighup_is_refused_and_the_old_one_stays(
    tmp_path: Path, nodes: list[SimulatedNode], running: list[ProxyProcess]
) -> None:
    proxy = ProxyProcess(tmp_path, nodes[:1])
    running.append(proxy)
    await proxy.start()
    proxy.write([], text=f"nodes: [{nodes[0].url}]\nrouting: {{strategy: fastest}}\n")
    proxy.signal(signal.SIGHUP)
    expected = (
        f"reload (SIGHUP) rejected, the running configuration stays: {proxy.config_path}: "
        "routing.strategy: unknown strategy 'fastest'"
    )
    await eventually(lambda: expected in proxy.log(), 10)
    async with aiohttp.ClientSession() as http:
        assert await proxy.generation(http) == 1
        async with http.post(proxy.url + "/api/generate", data=_generate(3)) as response:
            assert response.status == 200 and response.headers["X-Sollol-Node"] == "a"
    proxy.signal(signal.SIGTERM)
    assert await proxy.wait() == 0


async def test_reload_watch_applies_a_changed_file(
    tmp_path: Path, nodes: list[SimulatedNode], running: list[ProxyProcess]
) -> None:
    proxy = ProxyProcess(tmp_path, nodes[:1], reload={"watch": True, "interval": "0.2s"})
    running.append(proxy)
    await proxy.start()
    proxy.write(nodes[:2])
    async with aiohttp.ClientSession() as http:
        await eventually(lambda: "node b added" in proxy.log(), 10)
        assert await proxy.generation(http) == 2
    proxy.signal(signal.SIGINT)
    assert await proxy.wait() == 0


def _replace(path: Path, data: bytes) -> None:
    """Rewrite `path` in one step, so that the watcher never reads it half-written."""
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    os.replace(part, path)


async def test_reload_watch_survives_a_file_that_is_not_utf8_and_logs_each_error_once(
    tmp_path: Path, nodes: list[SimulatedNode], running: list[ProxyProcess]
) -> None:
    # Guards: a non-UTF-8 file is one rejection, not the watcher's end; an error is logged once.
    proxy = ProxyProcess(tmp_path, nodes[:1], reload={"watch": True, "interval": "0.2s"})
    running.append(proxy)
    await proxy.start()
    valid = proxy.config_path.read_bytes()
    rejected = "reload (the configuration changed) rejected, the running configuration stays"

    def logged(text: str) -> int:
        return proxy.log().count(text)

    _replace(proxy.config_path, valid + b"# caf\xe9, half-written by an editor\n")
    await eventually(lambda: logged(rejected) == 1, within=10)
    assert logged("not UTF-8 text") == 1
    await asyncio.sleep(2)  # about ten more re-reads of the same content: nothing more logged
    assert logged(rejected) == 1
    _replace(proxy.config_path, valid + b"routing: {strategy: fastest}\n")  # another error
    await eventually(lambda: logged(rejected) == 2, within=10)
    assert logged("unknown strategy 'fastest'") == 1
    await asyncio.sleep(2)
    assert logged(rejected) == 2
    proxy.write(nodes[:2])  # a valid edit is still applied
    async with aiohttp.ClientSession() as http:
        await eventually(lambda: "node b added" in proxy.log(), within=10)
        assert await proxy.generation(http) == 2
    proxy.signal(signal.SIGTERM)
    assert await proxy.wait() == 0


async def test_a_kept_node_keeps_its_live_state_and_tunables_apply_to_new_requests(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL], token_delay=0.05))
    app = made.proxy.runner.app
    state = made.fleet.nodes["a"]
    async with http.post(made.url + "/api/generate", data=_generate(40)) as response:
        await response.content.readline()
        node_a = {"url": made.nodes[0].url, "name": "a", "num_parallel": 4}
        new = load_config(
            None,
            env={},
            overrides={**TEST_SETTINGS, "nodes": [node_a], "routing.strategy": "least_loaded"},
        )
        apply_config(app, new)
        kept = made.fleet.nodes["a"]
        assert kept is state and kept.in_flight == 1 and kept.config.num_parallel == 4
        assert MODEL in kept.models
        await response.read()
    assert app[PROXY].live.generation == 2
    async with http.post(made.url + "/api/generate", data=_generate(2)) as response:
        assert response.headers["X-Sollol-Route"].startswith("least_loaded")


async def test_settings_that_need_a_restart_are_logged_and_kept(
    cluster: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]))
    app = made.proxy.runner.app
    running = app[PROXY].live.config
    node_a = {"url": made.nodes[0].url, "name": "a"}
    new = load_config(
        None,
        env={},
        overrides={
            **TEST_SETTINGS,
            "nodes": [node_a],
            "listen.port": 1,
            "timeouts.connect": 9,
            "log_level": "debug",
        },
    )
    root = logging.getLogger()
    level = root.level
    try:
        with caplog.at_level(logging.INFO, logger="sollol"):
            apply_config(app, new)
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(level)
    live = app[PROXY].live.config
    assert (live.port, live.timeouts.connect) == (running.port, running.timeouts.connect)
    assert live.log_level == "debug"
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("reload: listen.port changed from 0 to 1; that needs a restart")
        for m in messages
    )
    assert any(m.startswith("reload: timeouts.connect changed from 1.0 to 9.0") for m in messages)


async def test_metrics_port_log_format_and_reload_watch_need_a_restart(
    cluster: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Guards: a reload logs these three as restart-only and keeps their running values.
    made = await cluster(dict(name="a", models=[MODEL]))
    app = made.proxy.runner.app
    port = free_port()
    new = load_config(
        None,
        env={},
        overrides={
            **TEST_SETTINGS,
            "nodes": [{"url": made.nodes[0].url, "name": "a"}],
            "metrics.port": port,
            "log_format": "json",
            "reload.watch": True,
        },
    )
    with caplog.at_level(logging.INFO, logger="sollol"):
        apply_config(app, new)
    live = app[PROXY].live.config
    assert (live.metrics_port, live.log_format, live.reload_watch) == (None, "plain", False)
    assert app[PROXY].live.generation == 2  # the rest of the reload was applied
    messages = [r.getMessage() for r in caplog.records]
    for change in (
        f"metrics.port changed from None to {port}",
        "log_format changed from 'plain' to 'json'",
        "reload.watch changed from False to True",
    ):
        assert f"reload: {change}; that needs a restart, the running value stays" in messages


async def test_a_request_without_an_answer_yet_when_the_grace_ends_gets_503(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(dict(name="a", models=[MODEL]))
    made.nodes[0].faults.first_byte_delay = 30.0
    body = orjson.dumps({"model": "llama3.2", "prompt": "hi", "stream": False})
    pending = asyncio.create_task(http.post(made.url + "/api/generate", data=body))
    await eventually(lambda: made.proxy.runner.app[PROXY].drain.in_flight == 1)
    await made.proxy.stop(grace=0.2)
    response = await pending
    assert response.status == 503
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert orjson.loads(await response.read()) == {
        "error": "sollol-proxy is shutting down; try again"
    }
    # Named like every error the proxy makes, and the last answer on its connection.
    assert re.fullmatch("[0-9a-f]{16}", response.headers["X-Sollol-Request-Id"])
    assert response.headers["Connection"] == "close"


async def test_a_request_still_queued_when_the_grace_ends_gets_503_and_is_recorded_as_cut(
    cluster: ClusterFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    # Guards: a queued request cut by the shutdown is 503/cut_by_shutdown, not 499/client_closed.
    caplog.set_level(logging.INFO, logger="sollol.access")
    made = await cluster(dict(name="a", models=[MODEL], token_delay=0.05))
    app = made.proxy.runner.app
    async with http.post(made.url + "/api/generate", data=_generate(400)) as holder:
        await holder.content.readline()  # the only slot is taken for about 20 s
        queued = asyncio.create_task(_answer(http, made.url, _generate(3)))
        await eventually(lambda: app[ADMISSION].waiting == 1)
        await made.proxy.stop(grace=0.3)
        status, body = await queued
    assert status == 503
    assert orjson.loads(body) == {"error": "sollol-proxy is shutting down; try again"}
    records = [r.fields for r in caplog.records if r.name == "sollol.access"]  # type: ignore[attr-defined]
    waiter = [f for f in records if f["node"] is None]
    assert [(f["status"], f["outcome"]) for f in waiter] == [(503, "cut_by_shutdown")]
    assert app[ADMISSION].snapshot()["by_priority"]["5"]["left"] == 0  # no client left
    requests = {
        (s.labels["status"], s.labels["node"]): s.value
        for family in text_string_to_metric_families(app[ADMIN].metrics().text)
        for s in family.samples
        if s.name == "sollol_requests_total"
    }
    assert requests == {("200", "a"): 1, ("503", ""): 1}  # the stream cut mid-way, the waiter
