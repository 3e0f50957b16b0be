"""docker-compose.yml's `scale` profile: two proxy replicas sharing Redis behind nginx in TCP
mode. No Docker engine runs here: the wiring is checked from the files (every config mounted
passes `sollol-proxy check-config`), and the balancer's own nginx.conf runs for real (Debian's
nginx with its stream module) in front of two real replicas sharing a real redis-server."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
import yaml

from sollol_proxy import server
from sollol_proxy.bench import nginx
from sollol_proxy.config import Config, load_config
from sollol_proxy.server import start_proxy
from tests.conftest import ClusterFactory, free_port
from tests.redisd import RedisServer

REPO = Path(__file__).resolve().parent.parent
SCALE = ("sollol-1", "sollol-2", "balancer", "redis")
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Where each file of the repository is mounted in the container."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = REPO / source
    return out


def _proxy_config(service: dict[str, Any]) -> Config:
    return load_config(_mounts(service)[service["command"][1]], env={})


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match[1])


def _balancer() -> str:
    service = _compose()["services"]["balancer"]
    return _mounts(service)["/etc/nginx/nginx.conf"].read_text()


def test_the_profile_holds_the_replicas_redis_and_the_balancer_only() -> None:
    services = _compose()["services"]
    assert {name for name, s in services.items() if "scale" in s.get("profiles", [])} == set(SCALE)
    assert "profiles" not in services["sollol"]  # `docker compose up` is unchanged


def test_every_proxy_config_mounted_passes_check_config() -> None:
    services = _compose()["services"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLLOL_")}
    for name in ("sollol", "sollol-1", "sollol-2"):
        path = _mounts(services[name])[services[name]["command"][1]]
        checked = subprocess.run(
            [sys.executable, "-m", "sollol_proxy", "check-config", "-c", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert checked.returncode == 0, (name, checked.stderr)
        assert "configuration OK" in checked.stderr


def test_the_replicas_share_redis_and_the_nodes() -> None:
    services = _compose()["services"]
    configs = [_proxy_config(services[name]) for name in ("sollol-1", "sollol-2")]
    assert configs[0] == configs[1]
    config = configs[0]
    url = urlsplit(config.state.redis_url)
    assert config.state.backend == "redis" and url.hostname == "redis" and url.port == 6379
    nodes = {urlsplit(n.url).hostname for n in config.nodes}
    assert nodes == {urlsplit(n.url).hostname for n in _proxy_config(services["sollol"]).nodes}
    for name in ("sollol-1", "sollol-2"):
        assert set(services[name]["depends_on"]) == {"redis", *nodes}
    # An L4 balancer hides the client's address: one client's bound must hold them all.
    assert config.client_limits.max_per_client >= 1000
    assert "noeviction" in services["redis"]["command"]


def test_the_balancer_sends_to_both_replicas_on_their_port() -> None:
    services = _compose()["services"]
    conf = _balancer()
    port = _proxy_config(services["sollol-1"]).port
    servers = re.findall(r"^\s*server\s+([\w.-]+:\d+)", conf, re.MULTILINE)
    assert sorted(servers) == [f"sollol-1:{port}", f"sollol-2:{port}"]
    assert re.search(r"^\s*listen\s+(\d+);", conf, re.MULTILINE)[1] == str(port)
    assert services["balancer"]["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert set(services["balancer"]["depends_on"]) == {"sollol-1", "sollol-2"}
    assert "least_conn;" in conf and "stream {" in conf and "http {" not in conf


def test_docker_waits_for_the_drain_before_it_kills() -> None:
    services = _compose()["services"]
    for name in ("sollol", "sollol-1", "sollol-2"):
        drain = _proxy_config(services[name]).shutdown_grace + server.CUT_WRITE_S + server.CLOSE_S
        assert _seconds(services[name]["stop_grace_period"]) > drain, name


def _stream_nginx() -> str:
    """Debian's nginx, whose stream module is a package of its own. Without them the test
    skips and says why; in CI (`CI=true`, set by `.ci/run` after installing them) it fails."""
    executable = nginx.binary()
    if executable is None or not STREAM_MODULE.exists():
        reason = "nginx with its stream module (libnginx-mod-stream) is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true: that is a failure there")
        pytest.skip(reason)
    return executable


@asynccontextmanager
async def _balancer_running(replicas: list[str]) -> AsyncIterator[str]:
    """The profile's nginx.conf, run by Debian's nginx: the replicas' addresses for the service
    names, a free port for 11434, and the paths a user without root needs."""
    executable = _stream_nginx()
    port = free_port()
    conf = _balancer()
    for name, url in zip(("sollol-1", "sollol-2"), replicas, strict=True):
        conf = re.sub(rf"\b{name}:\d+", urlsplit(url).netloc, conf)
    conf = re.sub(r"listen\s+\d+;", f"listen 127.0.0.1:{port};", conf)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "nginx.conf"
        path.write_text(f"load_module {STREAM_MODULE};\n{conf}")
        process = await asyncio.create_subprocess_exec(
            executable,
            "-c",
            str(path),
            "-p",
            directory,
            "-g",
            f"daemon off; master_process off; error_log stderr error; pid {directory}/nginx.pid;",
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await nginx._wait_listening(port, process)
            yield f"http://127.0.0.1:{port}"
        finally:
            if process.returncode is None:
                process.terminate()
            await asyncio.wait_for(process.wait(), 10)


async def _embed(url: str) -> int:
    """One request on a connection of its own (the balancer places connections)."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
        http.post(url + "/api/embed", data=orjson.dumps({"model": "m", "input": "x"})) as answer,
    ):
        await answer.read()
        return answer.status


async def _requests(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url + "/sollol/stats") as response:
        return int(orjson.loads(await response.read())["requests"])


async def test_the_balancer_spreads_connections_and_skips_a_draining_replica(
    cluster: ClusterFactory, http: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    first = await cluster(dict(name="a", models=["m"]), state__redis_url=redis_server.url)
    second = await start_proxy(first.config)  # the same nodes and Redis, another port
    stopped = False
    try:
        async with _balancer_running([first.url, second.url]) as url:
            assert [await _embed(url) for _ in range(6)] == [200] * 6
            served = [await _requests(http, u) for u in (first.url, second.url)]
            assert sum(served) == 6 and min(served) >= 2  # both replicas took connections
            await second.stop()  # SIGTERM's path: the listener closes, the drain begins
            stopped = True
            assert [await _embed(url) for _ in range(6)] == [200] * 6  # all to the first
            assert await _requests(http, first.url) == served[0] + 6
    finally:
        if not stopped:
            await second.stop()
