"""The container files are consistent with the project (no Docker engine runs here to build them)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sollol_proxy.config import ConfigError, load_config
from tests.conftest import ClusterFactory

REPO = Path(__file__).resolve().parent.parent


def test_compose_mounts_a_valid_config_that_names_its_services() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    sollol = compose["services"]["sollol"]
    source, target, _ = sollol["volumes"][0].split(":")
    assert target == sollol["command"][1]
    config = load_config(REPO / source, env={})
    hosts = {urlsplit(n.url).hostname for n in config.nodes}
    assert hosts <= set(compose["services"]) and hosts
    # Management is open to the bridge's clients only because the port is published on the
    # host's loopback alone.
    assert sollol["ports"] == [f"127.0.0.1:{config.port}:{config.port}"]
    assert config.auth.open_management and not config.auth.keys


def test_batch_jobs_are_kept_on_a_volume() -> None:
    """The image stores batch jobs in SOLLOL_DATA_DIR, a directory its user owns, and compose
    mounts a named volume there."""
    dockerfile = (REPO / "Dockerfile").read_text()
    data_dir = re.search(r"^ENV SOLLOL_DATA_DIR=(\S+)$", dockerfile, re.MULTILINE)
    assert data_dir is not None
    assert f"chown nobody {data_dir[1]}" in dockerfile and "USER nobody" in dockerfile
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["sollol"]["volumes"])
    assert mounts[data_dir[1]] in compose["volumes"]


def test_dockerfile_copies_files_that_exist() -> None:
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source


# -- the image: nodes from SOLLOL_NODES, a health check ------------------------------------------


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    return (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines()


def _instruction(name: str) -> str:
    (line,) = [line for line in _dockerfile() if line.startswith(name + " ")]
    return line.removeprefix(name + " ")


def _image_config() -> Path:
    """The file the image's CMD reads, as the Dockerfile copies it there."""
    config_path = json.loads(_instruction("CMD"))[1]
    copies = [line.split()[1:] for line in _dockerfile() if line.startswith("COPY ")]
    (source,) = [src for src, dest in (c for c in copies if len(c) == 2) if dest == config_path]
    return REPO / source


def test_the_image_takes_its_nodes_from_sollol_nodes() -> None:
    path = _image_config()
    config = load_config(path, env={"SOLLOL_NODES": "http://gpu1:11434,gpu2"})
    assert [n.url for n in config.nodes] == ["http://gpu1:11434", "http://gpu2:11434"]
    assert (config.host, config.port) == ("0.0.0.0", 11434)  # reachable from outside it
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert str(error.value) == (
        f"{path}: nodes: no Ollama nodes configured: set SOLLOL_NODES "
        "(e.g. SOLLOL_NODES=http://gpu1:11434,http://gpu2:11434), 'nodes' or 'hosts_file'"
    )


async def test_the_image_refuses_to_start_without_nodes() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLLOL_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sollol_proxy",
        *json.loads(_instruction("CMD"))[:1],
        str(_image_config()),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    lines = stderr.decode().splitlines()
    assert len(lines) == 1 and "no Ollama nodes configured: set SOLLOL_NODES" in lines[0]


def _healthcheck(command: list[str]) -> list[str]:
    assert command[0] == "CMD" and command[1] == "python"
    return [sys.executable, *command[2:]]


async def _health_exit(command: list[str], port: int) -> int:
    process = await asyncio.create_subprocess_exec(
        *_healthcheck(command),
        env={**os.environ, "SOLLOL_PORT": str(port)},
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), 30)


async def test_the_health_checks_ask_sollol_health(cluster: ClusterFactory) -> None:
    command = ["CMD", *json.loads(_instruction("HEALTHCHECK").split(" CMD ", 1)[1])]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["sollol"]["healthcheck"]["test"] == command  # they cannot drift
    made = await cluster(dict(name="a", models=[]))
    port = int(made.url.rsplit(":", 1)[1])
    assert await _health_exit(command, port) == 0
    await made.node("a").stop()
    await made.fleet.refresh_all()
    assert await _health_exit(command, port) != 0  # 503: no node is up
    await made.proxy.stop()
    assert await _health_exit(command, port) != 0  # nothing answers


def test_compose_starts_the_proxy_once_its_nodes_are_healthy() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    config = load_config(REPO / services["sollol"]["volumes"][0].split(":")[0], env={})
    nodes = {urlsplit(n.url).hostname for n in config.nodes}
    assert services["sollol"]["depends_on"] == {
        name: {"condition": "service_healthy"} for name in nodes
    }
    for name in nodes:
        assert services[name]["image"].startswith("ollama/ollama")
        assert services[name]["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    assert config.port == 11434  # the port the health check asks when SOLLOL_PORT is unset


# -- Prometheus and Grafana ------------------------------------------------------------------

GRAFANA = REPO / "deploy" / "grafana"


def _mounts(service: dict) -> dict[str, Path]:
    """Container path -> repository path, for the service's bind mounts."""
    mounts = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = REPO / source
    return mounts


def test_compose_wires_prometheus_and_grafana_to_the_deploy_files() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    prometheus = _mounts(services["prometheus"])
    grafana = _mounts(services["grafana"])
    for source in [*prometheus.values(), *grafana.values()]:
        assert source.exists(), source
    scrape = yaml.safe_load(prometheus["/etc/prometheus/prometheus.yml"].read_text())
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    config = load_config(REPO / services["sollol"]["volumes"][0].split(":")[0], env={})
    assert host == "sollol" and int(port) == config.port  # the proxy service, its main port

    provisioning = grafana["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert urlsplit(source["url"]).hostname in services
    assert urlsplit(source["url"]).port == int(services["prometheus"]["ports"][0].split(":")[1])
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "sollol.yml").read_text())[
        "providers"
    ]
    assert grafana[provider["options"]["path"]] == GRAFANA / "dashboards"
    dashboard = json.loads((GRAFANA / "dashboards" / "sollol.json").read_text())
    uids = {t["datasource"]["uid"] for p in _panels(dashboard) for t in p.get("targets", [])}
    assert uids == {source["uid"]}


def _panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p["targets"]]
    return exprs + [v["query"]["query"] for v in dashboard["templating"]["list"]]


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


async def test_every_grafana_query_names_a_metric_the_proxy_exports(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "sollol.json").read_text())
    assert dashboard["uid"] and len(_panels(dashboard)) >= 20
    made = await cluster(dict(name="a", models=["llama3.2:latest"]))
    body = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}'
    for _ in range(2):
        async with http.post(made.url + "/api/chat", data=body) as response:
            await response.read()
    async with http.get(made.url + "/metrics") as response:
        families = list(text_string_to_metric_families((await response.read()).decode()))
    exported = {s.name for f in families for s in f.samples}
    # A labelled counter nobody has incremented yet (no failover happened) has no sample, but
    # the proxy declares it: its name with its type's suffixes counts as exported.
    exported |= {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ())}
    assert len({f.name for f in families if f.samples}) >= 15
    for query in _queries(dashboard):
        names = set(re.findall(r"\bsollol_[a-z0-9_]+", query))
        assert names, f"no sollol metric in {query!r}"
        assert names <= exported, f"{query!r}: {names - exported} not exported"
