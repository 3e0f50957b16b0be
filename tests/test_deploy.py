"""The container files are consistent with the project (no Docker engine runs here to build them)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import yaml

from sollol_proxy.config import load_config

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


def test_dockerfile_copies_files_that_exist() -> None:
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
