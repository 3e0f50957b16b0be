"""Configuration: layering, normalisation, and errors that name the origin, the key and the problem."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sollol_proxy.config import ConfigError, load_config, normalize_node_url
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "sollol.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_node_forms(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
nodes:
  - gpu1
  - gpu2:11500
  - url: https://gpu3.example.com/ollama/
    name: gpu3
    num_parallel: 4
    labels: {gpu: a100}
    headers: {Authorization: Bearer secret}
""",
    )
    config = load_config(path, env={})
    assert (config.host, config.port) == ("0.0.0.0", 11434)
    assert [n.url for n in config.nodes] == [
        "http://gpu1:11434",
        "http://gpu2:11500",
        "https://gpu3.example.com:443/ollama",
    ]
    assert [n.name for n in config.nodes] == ["gpu1:11434", "gpu2:11500", "gpu3"]
    gpu3 = config.nodes[2]
    assert gpu3.num_parallel == 4 and dict(gpu3.labels) == {"gpu": "a100"}
    assert dict(gpu3.headers) == {"Authorization": "Bearer secret"}
    assert config.to_dict()["nodes"][2]["headers"] == {"Authorization": "<redacted>"}


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: {port: 12000}\nnodes: [a:1]\ntimeouts: {first_byte: 10m}\n")
    env = {
        "SOLLOL_PORT": "13000",
        "SOLLOL_NODES": "http://b:2, c:3",
        "SOLLOL_IDLE_READ_TIMEOUT": "90s",
    }
    config = load_config(path, env=env)
    assert config.port == 13000
    assert [n.url for n in config.nodes] == ["http://b:2", "http://c:3"]
    assert config.timeouts.first_byte == 600.0 and config.timeouts.idle_read == 90.0
    config = load_config(path, env=env, overrides={"listen.port": 14000})
    assert config.port == 14000


def test_hosts_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    write(tmp_path, "# the seed's list\n10.0.0.1:11434\n\nnode-b   # comment\n", "hosts.txt")
    path = write(tmp_path, "hosts_file: hosts.txt\n")
    config = load_config(path, env={})
    assert [n.url for n in config.nodes] == ["http://10.0.0.1:11434", "http://node-b:11434"]


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (
            "nodes: [a]\nlisten: {port: seventy}\n",
            {},
            "sollol.yaml: listen.port: expected an integer",
        ),
        ("nodes: [a]\nlisten: {prot: 1}\n", {}, "sollol.yaml: listen.prot: unknown key"),
        ("nodes: [a]\ntimeout: {}\n", {}, "sollol.yaml: timeout: unknown key"),
        (
            "nodes: [ftp://a]\n",
            {},
            "sollol.yaml: nodes[0].url: 'ftp://a' is not an http(s) address",
        ),
        (
            "nodes: [{url: a, num_parallel: 0}]\n",
            {},
            "sollol.yaml: nodes[0].num_parallel: expected auto or an integer from 1 to 1024",
        ),
        ("nodes: [{url: a, colour: red}]\n", {}, "sollol.yaml: nodes[0].colour: unknown key"),
        ("nodes: [a, a]\n", {}, "sollol.yaml: nodes[1].name: duplicate node name"),
        ("nodes: []\n", {}, "sollol.yaml: nodes: no Ollama nodes configured"),
        (
            "nodes: [a]\nrouting: {strategy: fastest}\n",
            {},
            "sollol.yaml: routing.strategy: unknown strategy 'fastest'",
        ),
        (
            "nodes: [a]\ntimeouts: {connect: -1}\n",
            {},
            "sollol.yaml: timeouts.connect: must be greater than zero",
        ),
        (
            "nodes: [a]\nlimits: {max_body_bytes: lots}\n",
            {},
            "sollol.yaml: limits.max_body_bytes: expected a byte size",
        ),
        (
            "nodes: [a]\n",
            {"SOLLOL_PORT": "x"},
            "environment SOLLOL_PORT: listen.port: expected an integer",
        ),
        ("nodes: [a]\n", {"SOLLOL_NODES": "ftp://x"}, "environment SOLLOL_NODES: nodes[0].url"),
        ("nodes: [a\n", {}, "sollol.yaml: line 2, column 1: invalid YAML"),
        ("- a\n", {}, "sollol.yaml: the top level must be a mapping"),
        ("nodes: [a]\nhosts_file: missing.txt\n", {}, "sollol.yaml: hosts_file: cannot read"),
        (
            "nodes: [{url: a, headers: {Bad Name: x}}]\n",
            {},
            "sollol.yaml: nodes[0].headers.Bad Name: is not a valid header name",
        ),
        (
            'nodes: [{url: a, headers: {X-Key: "a\\nb"}}]\n',
            {},
            "sollol.yaml: nodes[0].headers.X-Key: must not contain line breaks",
        ),
        ("nodes: [{url: a, vram: lots}]\n", {}, "sollol.yaml: nodes[0].vram: expected a byte size"),
        (
            "nodes: [{url: a, priors: {decode_tokens_per_s: 0}}]\n",
            {},
            "sollol.yaml: nodes[0].priors.decode_tokens_per_s: expected a positive number",
        ),
        (
            "nodes: [a]\nrouting: {priors: {speed: 1}}\n",
            {},
            "sollol.yaml: routing.priors.speed: unknown prior",
        ),
        (
            "nodes: [a]\nrouting: {models: {llama3.2: fastest}}\n",
            {},
            "sollol.yaml: routing.models.llama3.2: unknown strategy 'fastest'",
        ),
        ("nodes: [a]\nlog_format: xml\n", {}, "sollol.yaml: log_format: expected plain or json"),
        (
            "nodes: [a]\n",
            {"SOLLOL_METRICS_PORT": "0"},
            "environment SOLLOL_METRICS_PORT: metrics.port: expected an integer from 1 to 65535",
        ),
        ("nodes: [a]\nmetrics: {prot: 9}\n", {}, "sollol.yaml: metrics.prot: unknown key"),
        (
            "nodes: [a]\nlimits: {max_header_bytes: 100}\n",
            {},
            "sollol.yaml: limits.max_header_bytes: must be at least 1024 bytes",
        ),
        (
            "nodes: [a]\nlimits: {max_connections: 0}\n",
            {},
            "sollol.yaml: limits.max_connections: expected an integer from 1 to 1000000",
        ),
        (
            "nodes: [a]\nshutdown: {grace: soon}\n",
            {},
            "sollol.yaml: shutdown.grace: expected seconds or a duration",
        ),
        ("nodes: [a]\nshutdown: {timeout: 1}\n", {}, "sollol.yaml: shutdown.timeout: unknown key"),
        (
            "nodes: [a]\nreload: {watch: sometimes}\n",
            {},
            "sollol.yaml: reload.watch: expected true or false, got 'sometimes'",
        ),
        (
            "nodes: [a]\n",
            {"SOLLOL_RELOAD_WATCH": "maybe"},
            "environment SOLLOL_RELOAD_WATCH: reload.watch: expected true or false",
        ),
        (
            "nodes: [a]\nreload: {interval: 0}\n",
            {},
            "sollol.yaml: reload.interval: must be greater than zero",
        ),
    ],
)
def test_errors_name_origin_key_and_problem(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert str(info.value).replace(str(tmp_path) + "/", "").startswith(expected), str(info.value)


def test_bad_line_in_hosts_file_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "a:1\nb c\n", "hosts.txt")
    path = write(tmp_path, "hosts_file: hosts.txt\n")
    with pytest.raises(ConfigError, match=r"hosts.txt:2: hosts_file: expected one host per line"):
        load_config(path, env={})


def test_duplicate_in_hosts_file_names_the_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "gpu1\n# again\ngpu1:11434\n", "hosts.txt")
    path = write(tmp_path, "hosts_file: hosts.txt\n")
    with pytest.raises(
        ConfigError, match=r"hosts.txt:3: hosts_file: duplicate node name 'gpu1:11434'"
    ):
        load_config(path, env={})


def test_routing_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
nodes:
  - {url: a, vram: 24GiB, max_loaded_models: 2, priors: {decode_tokens_per_s: 90}}
  - b
routing:
  strategy: least_loaded
  models: {llama3.2: round_robin}
  priors: {prefill_tokens_per_s: 2000}
""",
    )
    config = load_config(path, env={})
    a, b = config.nodes
    assert (a.vram_bytes, a.max_loaded_models, b.vram_bytes) == (24 * 2**30, 2, None)
    assert a.priors is not None and a.priors.decode_tokens_per_s == 90
    assert a.priors.prefill_tokens_per_s == 2000  # a node's priors start from the global ones
    assert config.strategy == "least_loaded" and dict(config.model_strategies) == {
        "llama3.2:latest": "round_robin"
    }
    assert load_config(None, env={"SOLLOL_NODES": "x"}).strategy == "performance"


def test_lifecycle_and_limit_settings(tmp_path: Path) -> None:
    defaults = load_config(None, env={"SOLLOL_NODES": "x"})
    assert (defaults.shutdown_grace, defaults.reload_watch, defaults.reload_interval) == (
        30.0,
        False,
        2.0,
    )
    assert (defaults.max_header_bytes, defaults.max_connections) == (64 * 2**10, 1000)
    path = write(
        tmp_path,
        "nodes: [a]\nlimits: {max_header_bytes: 16KiB, max_connections: 50}\n"
        "shutdown: {grace: 2m}\nreload: {watch: yes, interval: 500ms}\n",
    )
    config = load_config(path, env={"SOLLOL_MAX_CONNECTIONS": "70", "SOLLOL_SHUTDOWN_GRACE": "5s"})
    assert (config.max_header_bytes, config.max_connections) == (16384, 70)
    assert (config.shutdown_grace, config.reload_watch, config.reload_interval) == (5.0, True, 0.5)
    assert load_config(path, env={"SOLLOL_RELOAD_WATCH": "off"}).reload_watch is False
    assert config.to_dict()["shutdown"] == {"grace": 5.0}
    assert config.to_dict()["reload"] == {"watch": True, "interval": 0.5}
    assert config.to_dict()["limits"]["max_connections"] == 70


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", env={})


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("localhost", "http://localhost:11434"),
        (":1234", None),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ("[::1]:11434", "http://[::1]:11434"),
        ("'10.0.0.5:8080'", "http://10.0.0.5:8080"),
    ],
)
def test_node_addresses_parse_like_ollama_host(raw: str, url: str | None) -> None:
    if url is None:
        with pytest.raises(ValueError, match="no host"):
            normalize_node_url(raw)
    else:
        assert normalize_node_url(raw) == url


def test_shipped_configs_are_valid() -> None:
    for name in ("sollol.yaml", "deploy/sollol.compose.yaml"):
        config = load_config(REPO / name, env={})
        assert config.nodes, name


def test_cli_exits_before_binding_on_bad_config(tmp_path: Path) -> None:
    port = free_port()
    path = write(
        tmp_path,
        f"listen: {{host: 127.0.0.1, port: {port}}}\nnodes: [a]\nrouting: {{strategy: nope}}\n",
    )
    result = subprocess.run(
        [sys.executable, "-m", "sollol_proxy", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        f"configuration error: {path}: routing.strategy: unknown strategy 'nope'" in result.stderr
    )
    with socket.socket() as sock:  # the port was never taken
        sock.bind(("127.0.0.1", port))


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    path = write(tmp_path, "nodes: [{url: a, headers: {Authorization: Bearer s3cret}}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "sollol_proxy", "check-config", "-c", str(path), "--port", "12345"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "port: 12345" in result.stdout and "url: http://a:11434" in result.stdout
    assert "s3cret" not in result.stdout


def test_a_rejected_node_url_is_shown_without_its_password(tmp_path: Path) -> None:
    path = write(tmp_path, "nodes: ['http://bob:hunter2@gpu1:11434']\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert "hunter2" not in str(error.value)
    assert "'http://bob:<redacted>@gpu1:11434' must not carry credentials" in str(error.value)


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    import os

    path = write(tmp_path, "nodes: [gpu7]\n")
    result = subprocess.run(
        [sys.executable, "-m", "sollol_proxy", "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SOLLOL_CONFIG": str(path)},
    )
    assert result.returncode == 0, result.stderr
    assert "url: http://gpu7:11434" in result.stdout


def test_observability_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "nodes: [a]\nlog_format: JSON\nmetrics: {port: 9464}\n")
    config = load_config(path, env={})
    assert (config.log_format, config.metrics_port) == ("json", 9464)
    assert config.to_dict()["log_format"] == "json"
    assert config.to_dict()["metrics"] == {"port": 9464}
    config = load_config(path, env={"SOLLOL_LOG_FORMAT": "plain", "SOLLOL_METRICS_PORT": "9100"})
    assert (config.log_format, config.metrics_port) == ("plain", 9100)
    defaults = load_config(write(tmp_path, "nodes: [a]\n"), env={})
    assert (defaults.log_format, defaults.metrics_port) == ("plain", None)


def test_resilience_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
nodes: [a]
timeouts: {non_streamed: 10m, routes: {/api/embed: 30s}}
health: {backoff_max: 1m, jitter: 0.2}
outlier: {consecutive_failures: 5, base_ejection: 2s, max_ejection: 1m, busy_cooldown: 500ms}
retries: {budget_ratio: 0.5, min_concurrent: 1, backoff_base: 10ms, backoff_max: 1s}
""",
    )
    config = load_config(path, env={"SOLLOL_NON_STREAMED_TIMEOUT": "20m"})
    t = config.timeouts
    assert t.non_streamed == 1200.0 and dict(t.routes) == {"/api/embed": 30.0}
    assert t.first_byte_for("/api/embed", True) == 30.0 == t.first_byte_for("/api/embed", False)
    assert t.first_byte_for("/api/chat", True) == 900.0
    assert t.first_byte_for("/api/chat", False) == 1200.0
    assert (config.health_backoff_max, config.health_jitter) == (60.0, 0.2)
    o, r = config.outlier, config.retries
    assert (o.consecutive_failures, o.base_ejection, o.max_ejection, o.busy_cooldown) == (
        5,
        2.0,
        60.0,
        0.5,
    )
    assert (r.budget_ratio, r.min_concurrent, r.backoff_base, r.backoff_max) == (0.5, 1, 0.01, 1.0)
    effective = config.to_dict()
    assert effective["outlier"]["consecutive_failures"] == 5
    assert effective["retries"]["budget_ratio"] == 0.5
    assert effective["timeouts"]["routes"] == {"/api/embed": 30.0}
    assert effective["health"]["jitter"] == 0.2
    defaults = load_config(None, env={"SOLLOL_NODES": "x"})
    assert defaults.timeouts.non_streamed == 1800.0 and defaults.retries.min_concurrent == 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("timeouts: {routes: {/api/nope: 1s}}", "timeouts.routes./api/nope: unknown route"),
        ("timeouts: {routes: {/api/embed: soon}}", "timeouts.routes./api/embed: expected seconds"),
        ("timeouts: {routes: [1]}", "timeouts.routes: must map routes"),
        ("timeouts: {non_streamed: 0}", "timeouts.non_streamed: must be greater than zero"),
        ("health: {jitter: 0.9}", "health.jitter: expected a number from 0 to 0.5"),
        ("health: {backoff_max: x}", "health.backoff_max: expected seconds"),
        ("outlier: {consecutive_failures: 0}", "outlier.consecutive_failures: expected an integer"),
        (
            "outlier: {base_ejection: 1m, max_ejection: 30s}",
            "outlier.max_ejection: must be at least base_ejection (60s), got 30s",
        ),
        ("outlier: {busy_cooldown: -1}", "outlier.busy_cooldown: must be greater than zero"),
        ("outlier: {eject: 1}", "outlier.eject: unknown key"),
        ("retries: {budget_ratio: 2}", "retries.budget_ratio: expected a number from 0 to 1"),
        ("retries: {budget_ratio: lots}", "retries.budget_ratio: expected a number"),
        ("retries: {min_concurrent: -1}", "retries.min_concurrent: expected an integer"),
        (
            "retries: {backoff_base: 1s, backoff_max: 100ms}",
            "retries.backoff_max: must be at least backoff_base (1s), got 0.1s",
        ),
    ],
)
def test_resilience_errors_name_origin_key_and_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, f"nodes: [a]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert (
        str(info.value).replace(str(tmp_path) + "/", "").startswith(f"sollol.yaml: {expected}")
    ), str(info.value)


def test_non_streamed_timeout_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="environment SOLLOL_NON_STREAMED_TIMEOUT: timeouts"):
        load_config(None, env={"SOLLOL_NODES": "x", "SOLLOL_NON_STREAMED_TIMEOUT": "never"})


def test_node_capacity_settings_default_to_auto(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
nodes:
  - a
  - {url: b, num_parallel: auto, max_loaded_models: auto, vram: auto}
  - {url: c, num_parallel: "4", max_loaded_models: 2}
""",
    )
    config = load_config(path, env={})
    a, b, c = config.nodes
    assert (a.num_parallel, a.max_loaded_models, a.vram_bytes) == (None, None, None)
    assert (b.num_parallel, b.max_loaded_models, b.vram_bytes) == (None, None, None)
    assert (c.num_parallel, c.max_loaded_models) == (4, 2)
    shown = config.to_dict()["nodes"]
    assert [(n["num_parallel"], n["max_loaded_models"], n["vram"]) for n in shown] == [
        ("auto", "auto", "auto"),
        ("auto", "auto", "auto"),
        (4, 2, "auto"),
    ]
