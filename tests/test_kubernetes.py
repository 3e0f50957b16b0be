"""deploy/kubernetes/ is valid Kubernetes (kubernetes-validate, strict, against the API versions
below) and consistent with the proxy: selectors match, the ConfigMap's sollol.yaml loads and
points at the Redis Service, the grace period covers preStop and shutdown.grace, and the probes
ask paths the proxy answers as the manifests expect (no cluster runs here)."""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import kubernetes_validate
import orjson
import pytest
import yaml

from sollol_proxy import server
from sollol_proxy.config import Config, load_config
from sollol_proxy.simulator import SimulatedNode
from tests.conftest import ClusterFactory, eventually
from tests.lifecycle.test_lifecycle import ProxyProcess

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# The oldest Kubernetes still commonly run, and the newest the validator knows.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
PROXY_LABELS = {"app.kubernetes.io/name": "sollol-proxy", "app.kubernetes.io/component": "proxy"}


def _resources() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(MANIFESTS.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in _resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def _proxy_container() -> dict[str, Any]:
    (container,) = _one("Deployment", "sollol-proxy")["spec"]["template"]["spec"]["containers"]
    return container


def _config() -> Config:
    """The ConfigMap's sollol.yaml, loaded from a file as the pods load it."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "sollol.yaml"
        path.write_text(_one("ConfigMap", "sollol-proxy")["data"]["sollol.yaml"])
        return load_config(path, env={})


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_kubernetes(version: str) -> None:
    resources = _resources()
    assert {r["kind"] for r in resources} >= {
        "ConfigMap",
        "Deployment",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for resource in resources:
        kubernetes_validate.validate(resource, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_selectors_match_the_pods_they_mean() -> None:
    deployment = _one("Deployment", "sollol-proxy")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"] == PROXY_LABELS
    assert deployment["spec"]["template"]["metadata"]["labels"] == PROXY_LABELS
    assert _one("Service", "sollol-proxy")["spec"]["selector"] == PROXY_LABELS
    assert _one("PodDisruptionBudget", "sollol-proxy")["spec"]["selector"]["matchLabels"] == (
        PROXY_LABELS
    )
    hpa = _one("HorizontalPodAutoscaler", "sollol-proxy")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sollol-proxy",
    }
    assert hpa["minReplicas"] >= deployment["spec"]["replicas"]
    # CPU utilisation is measured against the request: without one the autoscaler cannot act.
    assert _proxy_container()["resources"]["requests"]["cpu"]
    redis = _one("StatefulSet", "sollol-redis")
    redis_service = _one("Service", "sollol-redis")
    assert redis["spec"]["serviceName"] == "sollol-redis"
    labels = redis["spec"]["template"]["metadata"]["labels"]
    assert redis["spec"]["selector"]["matchLabels"] == labels == redis_service["spec"]["selector"]


def test_the_configmap_is_a_valid_config_that_reaches_redis_and_the_pods_port() -> None:
    config = _config()
    assert config.state.backend == "redis"
    url = urlsplit(config.state.redis_url)
    (redis_port,) = _one("Service", "sollol-redis")["spec"]["ports"]
    assert (url.hostname, url.port) == ("sollol-redis", redis_port["port"])
    container = _proxy_container()
    (port,) = container["ports"]
    assert port["containerPort"] == config.port and config.host == "0.0.0.0"
    (service_port,) = _one("Service", "sollol-proxy")["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    # The file the container reads is the ConfigMap's, mounted as a directory (so that it is
    # updated in place and reload.watch applies a change).
    (mount,) = container["volumeMounts"]
    assert container["args"] == ["-c", f"{mount['mountPath']}/sollol.yaml"]
    assert "subPath" not in mount and config.reload_watch
    volumes = _one("Deployment", "sollol-proxy")["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "sollol-proxy"


def test_the_grace_period_covers_the_pause_and_the_drain() -> None:
    spec = _one("Deployment", "sollol-proxy")["spec"]["template"]["spec"]
    pause = _proxy_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    drain = _config().shutdown_grace + server.CUT_WRITE_S + server.CLOSE_S
    assert spec["terminationGracePeriodSeconds"] > float(pause[1]) + drain


def test_probes_ask_the_proxys_port_by_name() -> None:
    container = _proxy_container()
    assert container["readinessProbe"]["httpGet"] == {"path": "/sollol/health", "port": "http"}
    assert container["livenessProbe"]["httpGet"]["port"] == "http"


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        await response.read()
        return response.status


async def test_readiness_follows_the_nodes_and_liveness_does_not(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    ready = _proxy_container()["readinessProbe"]["httpGet"]["path"]
    alive = _proxy_container()["livenessProbe"]["httpGet"]["path"]
    c = await cluster(dict(name="a", models=["m"]))
    assert await _status(http, c.url + ready) == 200
    assert await _status(http, c.url + alive) == 200
    await c.node("a").stop()  # every node down: not ready, but alive (no restart loop)
    await eventually(lambda: not c.fleet.nodes["a"].healthy)
    assert await _status(http, c.url + ready) == 503
    assert await _status(http, c.url + alive) == 200


async def test_readiness_fails_as_soon_as_the_drain_starts(tmp_path: Path) -> None:
    """SIGTERM (after preStop): the listener closes at once, so a readiness probe is refused
    while the streams in flight finish."""
    ready = _proxy_container()["readinessProbe"]["httpGet"]["path"]
    node = SimulatedNode(name="a", models=["llama3.2"], deterministic=True, token_delay=0.05)
    await node.start(port=0)
    proxy = ProxyProcess(tmp_path, [node], shutdown={"grace": "30s"})
    try:
        await proxy.start()
        async with aiohttp.ClientSession() as http:
            assert await _status(http, proxy.url + ready) == 200
            body = orjson.dumps(
                {"model": "llama3.2", "prompt": "hi", "options": {"num_predict": 40}}
            )
            async with http.post(proxy.url + "/api/generate", data=body) as response:
                await response.content.readline()  # the stream is under way (~2 s)
                proxy.signal(signal.SIGTERM)
                await eventually(lambda: "draining 1 request(s)" in proxy.log(), within=10)
                async with aiohttp.ClientSession() as probe:
                    with pytest.raises(aiohttp.ClientConnectionError):
                        await _status(probe, proxy.url + ready)
                rest = [line async for line in response.content]
            assert orjson.loads(rest[-1])["done"] is True  # the stream in flight finished
        assert await proxy.wait() == 0
    finally:
        if proxy.process is not None and proxy.process.returncode is None:
            proxy.process.kill()
            await proxy.process.wait()
        await node.stop()
