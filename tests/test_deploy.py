"""The container files are consistent with the project (no Docker engine runs here to build them)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sollol_proxy.config import load_config
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
    assert sollol["ports"] == [f"{config.port}:{config.port}"]


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
