"""Every configuration error names its origin (file, variable or flag), the key and the problem,
and is a ConfigError: never another exception (a traceback), never a value that breaks the
proxy once its port is bound."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sollol_proxy.config import ConfigError, load_config
from sollol_proxy.config.layers import _SECTIONS

KEYS = [f"{section}.{key}" for section, keys in _SECTIONS.items() for key in sorted(keys)]
KEYS += ["nodes", "hosts_file", "log_level", "log_format"]
# Values of every wrong kind: a key accepts some of them, and for the others must say why not.
WRONG: list[Any] = [
    True,
    "abc",
    -1,
    0,
    math.inf,
    math.nan,
    10**30,
    [],
    {},
    [1],
    [[]],
    [{}],
    {"a": 1},
    {"a": []},
    "a\0b",
]
# Keys checked against another: a value that does not fit is reported at the other key.
PARTNER = {
    "listen.tls_cert": "listen.tls_key",
    "listen.tls_key": "listen.tls_cert",
    "outlier.base_ejection": "outlier.max_ejection",
    "retries.backoff_base": "retries.backoff_max",
}


def _file(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "sollol.yaml"
    path.write_text(yaml.safe_dump({"nodes": ["gpu1"], **data}))
    return path


def _nest(key: str, value: Any) -> dict[str, Any]:
    section, _, sub = key.partition(".")
    return {section: {sub: value}} if sub else {key: value}


@pytest.mark.parametrize("key", KEYS)
def test_a_wrong_value_of_any_key_is_a_config_error_naming_file_and_key(
    tmp_path: Path, key: str
) -> None:
    for value in WRONG:
        path = _file(tmp_path, _nest(key, value))
        try:
            load_config(path, env={})
        except ConfigError as error:
            assert error.origin.startswith(str(path)), (key, value, str(error))
            named = (key, PARTNER.get(key, key))
            assert error.key.startswith(named), (key, value, str(error))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Not a finite number of seconds: inf overflowed at start-up, after the port was bound.
        ({"health": {"timeout": math.inf}}, "health.timeout: expected a finite duration"),
        ({"timeouts": {"first_byte": math.nan}}, "timeouts.first_byte: expected a finite"),
        ({"queue": {"max_wait": "9" * 400}}, "queue.max_wait: expected a finite duration"),
        ({"timeouts": {"routes": {"/api/embed": math.inf}}}, "timeouts.routes./api/embed"),
        # Linux refuses a keep-alive idle time over 32767s: every node connection failed (503).
        ({"limits": {"tcp_keepalive": "10h"}}, "limits.tcp_keepalive: must be at most 32767s"),
        # aiohttp's parser cannot hold the number: every request was disconnected.
        ({"limits": {"max_header_bytes": 10**30}}, "limits.max_header_bytes: must be at most"),
        ({"limits": {"body_min_rate": 10**30}}, "limits.body_min_rate: must be at most"),
        # A strategy that is not a string raised TypeError (unhashable).
        ({"routing": {"models": {"llama3.2": []}}}, "routing.models.llama3.2: unknown strategy"),
        # A path with a NUL raised ValueError.
        ({"hosts_file": "a\0b"}, "hosts_file: cannot read"),
        ({"listen": {"tls_cert": "a\0b", "tls_key": "k"}}, "listen.tls_cert: cannot load"),
        ({"batch": {"data_dir": "a\0b"}}, "batch.data_dir: expected a directory path"),
        # A wrong type that happened to be empty was taken for "not set".
        ({"hosts_file": []}, "hosts_file: expected a file path"),
        ({"routing": {"models": []}}, "routing.models: must map model names"),
        ({"routing": {"priors": ""}}, "routing.priors: must be a mapping"),
        ({"timeouts": {"routes": 0}}, "timeouts.routes: must map routes"),
        ({"queue": {"bands": {}}}, "queue.bands: must be a list"),
        ({"auth": {"keys": {}}}, "auth.keys: must be a list"),
        ({"listen": {"allowed_hosts": 0}}, "listen.allowed_hosts: must be a list"),
        ({"nodes": {}}, "nodes: must be a list"),
        ({"nodes": [{"url": "gpu1", "name": ""}]}, "nodes[0].name: must be letters"),
        # A header whose value was forgotten went to the node as "None".
        (
            {"nodes": [{"url": "gpu1", "headers": {"Authorization": None}}]},
            "nodes[0].headers.Authorization: expected a string, got None",
        ),
        ({"nodes": [{"url": "gpu1", "labels": {"gpu": []}}]}, "nodes[0].labels.gpu: expected a"),
        ({"nodes": [{"url": "gpu1", "name": 0}]}, "nodes[0].name: must be letters"),
        (
            {"auth": {"keys": [{"name": "k", "sha256": "a" * 64, "models": {}}]}},
            "auth.keys[0].models: must be a list",
        ),
        # Both bound on listen.host: under uvloop the proxy then said it listened, and did not.
        ({"metrics": {"port": 11434}}, "metrics.port: must differ from listen.port (11434)"),
    ],
)
def test_values_that_broke_the_proxy_or_were_taken_wrongly(
    tmp_path: Path, data: dict[str, Any], expected: str
) -> None:
    path = _file(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: {expected}"), str(info.value)


@pytest.mark.parametrize(
    ("data", "env", "expected"),
    [
        # A pair's check blamed "defaults" when only one of the pair was set, in the file ...
        ({"listen": {"tls_cert": "cert.pem"}}, {}, "{path}: listen.tls_key: is required"),
        ({"outlier": {"base_ejection": "10m"}}, {}, "{path}: outlier.max_ejection: must be"),
        ({"retries": {"backoff_base": "1s"}}, {}, "{path}: retries.backoff_max: must be"),
        ({"embed": {"min_batch": 300}}, {}, "{path}: embed.max_batch: must be at least"),
        ({"batch": {"max_docs_per_job": 2000000}}, {}, "{path}: batch.max_docs_total: must be"),
        # ... or in the environment.
        ({}, {"SOLLOL_TLS_KEY": "key.pem"}, "environment SOLLOL_TLS_KEY: listen.tls_cert: is"),
    ],
)
def test_a_pair_that_does_not_fit_blames_who_set_one_of_it(
    tmp_path: Path, data: dict[str, Any], env: dict[str, str], expected: str
) -> None:
    path = _file(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert str(info.value).startswith(expected.format(path=path)), str(info.value)


def test_an_unknown_sollol_variable_is_an_error_as_an_unknown_key_is() -> None:
    """It was ignored: a misspelt or guessed variable left its setting at the default."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"SOLLOL_NODES": "gpu1", "SOLLOL_QUEUE_AGEING": "5s"})
    assert str(info.value).startswith(
        "environment SOLLOL_QUEUE_AGEING: unknown variable; other settings are keys of the "
        "config file (known: SOLLOL_ALLOWED_HOSTS, "
    )
    assert load_config(None, env={"SOLLOL_NODES": "gpu1", "SOLLOL_CONFIG": "x", "OTHER": "1"})


def kubernetes_service_links(service: str, ip: str, port: int) -> dict[str, str]:
    """The variables Kubernetes gives every pod of the namespace for one Service (its
    `enableServiceLinks` default), for a Service with one TCP port named `http`."""
    name = service.upper().replace("-", "_")
    url = f"tcp://{ip}:{port}"
    tcp = f"{name}_PORT_{port}_TCP"
    return {
        f"{name}_SERVICE_HOST": ip,
        f"{name}_SERVICE_PORT": str(port),
        f"{name}_SERVICE_PORT_HTTP": str(port),
        f"{name}_PORT": url,
        tcp: url,
        f"{tcp}_PROTO": "tcp",
        f"{tcp}_PORT": str(port),
        f"{tcp}_ADDR": ip,
    }


def test_the_deployments_own_service_links_are_not_unknown_settings() -> None:
    """deploy/kubernetes's Services `sollol-proxy` and `sollol-redis` give every pod
    SOLLOL_PROXY_PORT=tcp://..., SOLLOL_REDIS_SERVICE_HOST=... : refusing them would stop every
    replica of the project's own deployment."""
    env = {"SOLLOL_NODES": "gpu1"}
    env |= kubernetes_service_links("sollol-proxy", "10.96.0.12", 11434)
    env |= kubernetes_service_links("sollol-redis", "fd00::1", 6379)
    assert load_config(None, env=env).port == 11434
    # The shape alone is not enough: a misspelt setting with a setting's value is refused.
    for var, value in (("SOLLOL_METRIC_PORT", "9100"), ("SOLLOL_PROXY_PORT", "11435")):
        with pytest.raises(ConfigError, match=f"environment {var}: unknown variable"):
            load_config(None, env={"SOLLOL_NODES": "gpu1", var: value})


def test_a_config_or_hosts_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "hosts.txt").write_bytes(b"gpu1 # caf\xe9\n")  # raised UnicodeDecodeError
    path = _file(tmp_path, {"hosts_file": "hosts.txt"})
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}: hosts_file: {tmp_path / 'hosts.txt'}: not UTF-8 text (byte 10)"
    )
    path.write_bytes(b"nodes: [gpu1] # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"sollol.yaml: not UTF-8 text \(byte 19\)"):
        load_config(path, env={})


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "sollol.yaml"
    path.write_text("nodes: [gpu1]\nlisten:\n  port: [1\n")
    with pytest.raises(ConfigError, match=r"sollol.yaml: line 4, column 1: invalid YAML"):
        load_config(path, env={})
    path.write_text("nodes: [gpu1]\n  listen: 1\n")
    with pytest.raises(ConfigError, match=r"sollol.yaml: line 2, column 3: invalid YAML"):
        load_config(path, env={})


def test_yaml_nested_too_deeply_is_an_error_not_a_recursion_error(tmp_path: Path) -> None:
    """RecursionError was a traceback at start-up, and ended the reload watcher."""
    path = tmp_path / "sollol.yaml"
    path.write_text("nodes: [gpu1]\nlabels: " + "[" * 2000 + "]" * 2000 + "\n")
    with pytest.raises(ConfigError, match=r"sollol.yaml: invalid YAML: nested too deeply"):
        load_config(path, env={})


def test_a_key_given_twice_is_an_error_not_the_last_one_silently(tmp_path: Path) -> None:
    path = tmp_path / "sollol.yaml"
    path.write_text("nodes: [gpu1]\nlisten: {port: 1}\nlisten: {host: x}\n")
    with pytest.raises(
        ConfigError, match=r"sollol.yaml: line 3, column 1: invalid YAML: duplicate key 'listen'"
    ):
        load_config(path, env={})
    path.write_text("nodes: [{url: gpu1, name: a, name: b}]\n")
    with pytest.raises(ConfigError, match=r"line 1, column 30: invalid YAML: duplicate key 'name'"):
        load_config(path, env={})
    path.write_text("nodes: [gpu1]\nlisten: {<<: {port: 2}, host: 127.0.0.1}\n")
    assert load_config(path, env={}).port == 2


def test_a_config_file_named_by_sollol_config_that_is_a_directory(tmp_path: Path) -> None:
    """Named by the variable, the error names the file, not a `--config` flag never given."""
    result = subprocess.run(
        [sys.executable, "-m", "sollol_proxy", "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SOLLOL_CONFIG": str(tmp_path)},
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"sollol-proxy: configuration error: {tmp_path}: cannot read config file"
    ), result.stderr
    assert "--config" not in result.stderr
