"""The one configuration object: YAML file, then SOLLOL_* environment, then CLI flags, then validation.

Every layer writes into one raw mapping and remembers where each key came from, so a bad value
is reported as `<origin>: <key>: <problem>` (origin = the file, the environment variable or the flag).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from .learning import Priors
from .names import normalize_model
from .routing import STRATEGIES

DEFAULT_OLLAMA_PORT = 11434


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""

    def __init__(self, origin: str, key: str, problem: str) -> None:
        self.origin, self.key, self.problem = origin, key, problem
        super().__init__(f"{origin}: {key}: {problem}" if key else f"{origin}: {problem}")


@dataclass(frozen=True)
class NodeConfig:
    url: str
    name: str
    num_parallel: int = 1
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    vram_bytes: int | None = None  # memory for models; None: only max_loaded_models limits them
    max_loaded_models: int = 3  # the node's OLLAMA_MAX_LOADED_MODELS (Ollama's auto value is 3)
    priors: Priors | None = None  # this node's starting speeds, instead of routing.priors


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    # Ollama sends headers only with the first token, after a model load that may take minutes.
    first_byte: float = 900.0
    idle_read: float = 300.0


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = DEFAULT_OLLAMA_PORT
    nodes: tuple[NodeConfig, ...] = ()
    timeouts: Timeouts = Timeouts()
    health_interval: float = 5.0
    health_timeout: float = 3.0
    inventory_interval: float = 15.0
    strategy: str = "performance"
    model_strategies: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    priors: Priors = field(default_factory=Priors)
    decisions_kept: int = 500
    max_attempts: int = 3
    max_body_bytes: int = 64 * 2**20
    log_level: str = "info"

    def node(self, name: str) -> NodeConfig | None:
        return next((n for n in self.nodes if n.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration in the YAML layout (for `check-config`); secrets redacted."""
        return {
            "listen": {"host": self.host, "port": self.port},
            "nodes": [
                {
                    "url": n.url,
                    "name": n.name,
                    "num_parallel": n.num_parallel,
                    "labels": dict(n.labels),
                    "headers": {k: "<redacted>" for k in n.headers},
                    "vram": n.vram_bytes,
                    "max_loaded_models": n.max_loaded_models,
                    "priors": asdict(n.priors) if n.priors else None,
                }
                for n in self.nodes
            ],
            "timeouts": asdict(self.timeouts),
            "health": {"interval": self.health_interval, "timeout": self.health_timeout},
            "inventory": {"interval": self.inventory_interval},
            "routing": {
                "strategy": self.strategy,
                "models": dict(self.model_strategies),
                "max_attempts": self.max_attempts,
                "priors": asdict(self.priors),
                "decisions_kept": self.decisions_kept,
            },
            "limits": {"max_body_bytes": self.max_body_bytes},
            "log_level": self.log_level,
        }


# ---------------------------------------------------------------------------------------------
# Raw layers

_ENV_KEYS: dict[str, str] = {
    "SOLLOL_HOST": "listen.host",
    "SOLLOL_PORT": "listen.port",
    "SOLLOL_NODES": "nodes",
    "SOLLOL_HOSTS_FILE": "hosts_file",
    "SOLLOL_CONNECT_TIMEOUT": "timeouts.connect",
    "SOLLOL_FIRST_BYTE_TIMEOUT": "timeouts.first_byte",
    "SOLLOL_IDLE_READ_TIMEOUT": "timeouts.idle_read",
    "SOLLOL_HEALTH_INTERVAL": "health.interval",
    "SOLLOL_HEALTH_TIMEOUT": "health.timeout",
    "SOLLOL_INVENTORY_INTERVAL": "inventory.interval",
    "SOLLOL_STRATEGY": "routing.strategy",
    "SOLLOL_MAX_ATTEMPTS": "routing.max_attempts",
    "SOLLOL_MAX_BODY_BYTES": "limits.max_body_bytes",
    "SOLLOL_LOG_LEVEL": "log_level",
}

_SECTIONS: dict[str, set[str]] = {
    "listen": {"host", "port"},
    "timeouts": {"connect", "first_byte", "idle_read"},
    "health": {"interval", "timeout"},
    "inventory": {"interval"},
    "routing": {"strategy", "models", "max_attempts", "priors", "decisions_kept"},
    "limits": {"max_body_bytes"},
}
_TOP_LEVEL = {*_SECTIONS, "nodes", "hosts_file", "log_level"}
_NODE_KEYS = {
    "url",
    "name",
    "num_parallel",
    "labels",
    "headers",
    "vram",
    "max_loaded_models",
    "priors",
}


class _Layers:
    """A flat `dotted.key -> value` mapping that remembers the origin of every key."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.origins: dict[str, str] = {}
        self.base_dir = Path.cwd()
        self.file_origin = ""

    def set(self, key: str, value: Any, origin: str) -> None:
        self.values[key] = value
        self.origins[key] = origin

    def error(self, key: str, problem: str) -> ConfigError:
        """An error at `key`, blamed on whoever set it or the section it is in."""
        origin = "defaults"
        for end in range(len(key), 0, -1):
            if key[:end] in self.origins and (end == len(key) or key[end] in ".["):
                origin = self.origins[key[:end]]
                break
        return ConfigError(origin, key, problem)


def _load_file(path: Path, layers: _Layers) -> None:
    origin = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(origin, "", f"cannot read config file: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(
            origin, "", f"{where}invalid YAML: {getattr(exc, 'problem', exc)}"
        ) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(origin, "", "the top level must be a mapping of keys")
    layers.base_dir = path.resolve().parent
    layers.file_origin = origin
    for key, value in data.items():
        if key not in _TOP_LEVEL:
            raise ConfigError(
                origin, str(key), f"unknown key (known: {', '.join(sorted(_TOP_LEVEL))})"
            )
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(origin, key, "must be a mapping")
            for sub, subvalue in value.items():
                if sub not in _SECTIONS[key]:
                    known = ", ".join(sorted(_SECTIONS[key]))
                    raise ConfigError(origin, f"{key}.{sub}", f"unknown key (known: {known})")
                layers.set(f"{key}.{sub}", subvalue, origin)
        else:
            layers.set(key, value, origin)


def _load_env(env: Mapping[str, str], layers: _Layers) -> None:
    for var, key in _ENV_KEYS.items():
        if var in env:
            value: Any = env[var]
            if key == "nodes":
                value = [part.strip() for part in value.split(",") if part.strip()]
            layers.set(key, value, f"environment {var}")


def read_hosts_file(path: Path, origin: str) -> list[tuple[int, str]]:
    """The seed's hosts.txt: one `host:port` (or URL) per line, `#` comments, blank lines ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(origin, "hosts_file", f"cannot read {path}: {exc.strerror}") from exc
    hosts = []
    for number, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if any(c.isspace() for c in entry):
            raise ConfigError(
                f"{path}:{number}", "hosts_file", f"expected one host per line, got {entry!r}"
            )
        hosts.append((number, entry))
    return hosts


# ---------------------------------------------------------------------------------------------
# Validation


def normalize_node_url(raw: str) -> str:
    """Parse a node address the way OLLAMA_HOST is parsed: `host`, `host:port` or a URL."""
    text = raw.strip().strip("\"'")
    if not text:
        raise ValueError("is empty")
    if "://" not in text:
        text = f"http://{text}"
        default_port = DEFAULT_OLLAMA_PORT
    else:
        default_port = None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{raw!r} is not an http(s) address")
    if not parts.hostname:
        raise ValueError(f"{raw!r} has no host")
    if parts.query or parts.fragment or parts.username:
        raise ValueError(f"{raw!r} must not carry credentials, a query or a fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{raw!r} has an invalid port") from exc
    if port is None:
        port = default_port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "kib": 2**10,
    "mb": 10**6,
    "mib": 2**20,
    "gb": 10**9,
    "gib": 2**30,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(layers: _Layers, key: str, default: float) -> float:
    value = layers.values.get(key, default)
    if isinstance(value, bool):
        raise layers.error(key, f"expected seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise layers.error(
                key, f"expected seconds or a duration like '30s', '5m', got {value!r}"
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise layers.error(key, f"must be greater than zero, got {value!r}")
    return seconds


def _integer(
    layers: _Layers, key: str, default: int, low: int, high: int, value: Any = None
) -> int:
    value = layers.values.get(key, default) if value is None else value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise layers.error(key, f"expected an integer from {low} to {high}, got {value!r}")
    return value


def _size(layers: _Layers, key: str, default: int, value: Any = None) -> int:
    value = layers.values.get(key, default) if value is None else value
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise layers.error(key, f"expected a byte size like 67108864 or '64MiB', got {value!r}")
        size = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]
    if size < 1024:
        raise layers.error(key, f"must be at least 1024 bytes, got {value!r}")
    return size


def _string_map(layers: _Layers, key: str, value: Any) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise layers.error(key, "must be a mapping of names to strings")
    return MappingProxyType({k: str(v) for k, v in value.items()})


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token


def _headers(layers: _Layers, key: str, value: Any) -> Mapping[str, str]:
    headers = _string_map(layers, key, value)
    for name, text in headers.items():
        if not _HEADER_NAME.match(name):
            raise layers.error(f"{key}.{name}", "is not a valid header name")
        if any(c in text for c in "\r\n\0"):
            raise layers.error(f"{key}.{name}", "must not contain line breaks or NUL")
    return headers


def _node(layers: _Layers, index: int, raw: Any, priors: Priors) -> NodeConfig:
    key = f"nodes[{index}]"
    entry = {"url": raw} if isinstance(raw, str) else raw
    if not isinstance(entry, dict):
        raise layers.error(key, "must be a URL string or a mapping with a 'url'")
    unknown = set(entry) - _NODE_KEYS
    if unknown:
        known = ", ".join(sorted(_NODE_KEYS))
        raise layers.error(f"{key}.{sorted(unknown)[0]}", f"unknown key (known: {known})")
    if "url" not in entry:
        raise layers.error(f"{key}.url", "is required")
    try:
        url = normalize_node_url(str(entry["url"]))
    except ValueError as exc:
        raise layers.error(f"{key}.url", str(exc)) from exc
    name = entry.get("name") or urlsplit(url).netloc
    if (
        not isinstance(name, str)
        or not re.fullmatch(r"[A-Za-z0-9._:\[\]-]+", name)
        or name == "all"
    ):
        raise layers.error(
            f"{key}.name",
            f"must be letters, digits, '.', '_', ':', '-' and not 'all', got {name!r}",
        )
    num_parallel = entry.get("num_parallel", 1)
    if (
        isinstance(num_parallel, bool)
        or not isinstance(num_parallel, int)
        or not 1 <= num_parallel <= 1024
    ):
        raise layers.error(
            f"{key}.num_parallel", f"expected an integer from 1 to 1024, got {num_parallel!r}"
        )
    vram = entry.get("vram")
    return NodeConfig(
        url=url,
        name=name,
        num_parallel=num_parallel,
        labels=_string_map(layers, f"{key}.labels", entry.get("labels")),
        headers=_headers(layers, f"{key}.headers", entry.get("headers")),
        vram_bytes=None if vram is None else _size(layers, f"{key}.vram", 0, vram),
        max_loaded_models=_integer(
            layers, f"{key}.max_loaded_models", 3, 1, 1024, entry.get("max_loaded_models")
        ),
        priors=_priors(layers, f"{key}.priors", entry["priors"], priors)
        if "priors" in entry
        else None,
    )


def _priors(layers: _Layers, key: str, value: Any, base: Priors) -> Priors:
    if not isinstance(value, dict):
        raise layers.error(key, "must be a mapping of prior names to numbers")
    known = Priors.__dataclass_fields__
    for name, number in value.items():
        if name not in known:
            raise layers.error(f"{key}.{name}", f"unknown prior (known: {', '.join(known)})")
        if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
            raise layers.error(f"{key}.{name}", f"expected a positive number, got {number!r}")
    return replace(base, **{name: float(number) for name, number in value.items()})


def _model_strategies(layers: _Layers) -> Mapping[str, str]:
    value = layers.values.get("routing.models") or {}
    if not isinstance(value, dict):
        raise layers.error("routing.models", "must map model names to strategy names")
    for model, strategy in value.items():
        if strategy not in STRATEGIES:
            raise layers.error(
                f"routing.models.{model}",
                f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})",
            )
    return MappingProxyType({normalize_model(str(m)): str(s) for m, s in value.items()})


def _nodes(layers: _Layers, priors: Priors) -> tuple[NodeConfig, ...]:
    raw_nodes = layers.values.get("nodes") or []
    if not isinstance(raw_nodes, list):
        raise layers.error("nodes", "must be a list of node URLs or mappings")
    nodes = [_node(layers, i, raw, priors) for i, raw in enumerate(raw_nodes)]
    # Where each node was declared, so that a duplicate is reported at its own line.
    declared = [(layers.origins.get("nodes", "defaults"), f"nodes[{i}]") for i in range(len(nodes))]
    hosts_file = layers.values.get("hosts_file")
    if hosts_file:
        origin = layers.origins["hosts_file"]
        path = Path(str(hosts_file))
        if not path.is_absolute() and origin == layers.file_origin:
            path = layers.base_dir / path  # relative to the config file that names it
        for number, host in read_hosts_file(path, origin):
            try:
                url = normalize_node_url(host)
            except ValueError as exc:
                raise ConfigError(f"{path}:{number}", "hosts_file", str(exc)) from exc
            nodes.append(NodeConfig(url=url, name=urlsplit(url).netloc))
            declared.append((f"{path}:{number}", "hosts_file"))
    for what in ("name", "url"):
        seen: set[str] = set()
        for node, (origin, key) in zip(nodes, declared, strict=True):
            value = getattr(node, what)
            if value in seen:
                raise ConfigError(
                    origin,
                    f"{key}.{what}" if key != "hosts_file" else key,
                    f"duplicate node {what} {value!r}",
                )
            seen.add(value)
    if not nodes:
        raise layers.error(
            "nodes", "no Ollama nodes configured (set 'nodes', 'hosts_file' or SOLLOL_NODES)"
        )
    return tuple(nodes)


def _validate(layers: _Layers) -> Config:
    defaults = Config()
    host = layers.values.get("listen.host", defaults.host)
    if not isinstance(host, str) or not host:
        raise layers.error("listen.host", f"expected an address, got {host!r}")
    strategy = str(layers.values.get("routing.strategy", defaults.strategy))
    if strategy not in STRATEGIES:
        raise layers.error(
            "routing.strategy", f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})"
        )
    log_level = str(layers.values.get("log_level", defaults.log_level)).lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise layers.error(
            "log_level", f"expected debug, info, warning or error, got {log_level!r}"
        )
    priors = _priors(layers, "routing.priors", layers.values.get("routing.priors") or {}, Priors())
    return Config(
        host=host,
        port=_integer(layers, "listen.port", defaults.port, 0, 65535),
        nodes=_nodes(layers, priors),
        timeouts=Timeouts(
            connect=_seconds(layers, "timeouts.connect", defaults.timeouts.connect),
            first_byte=_seconds(layers, "timeouts.first_byte", defaults.timeouts.first_byte),
            idle_read=_seconds(layers, "timeouts.idle_read", defaults.timeouts.idle_read),
        ),
        health_interval=_seconds(layers, "health.interval", defaults.health_interval),
        health_timeout=_seconds(layers, "health.timeout", defaults.health_timeout),
        inventory_interval=_seconds(layers, "inventory.interval", defaults.inventory_interval),
        strategy=strategy,
        model_strategies=_model_strategies(layers),
        priors=priors,
        decisions_kept=_integer(
            layers, "routing.decisions_kept", defaults.decisions_kept, 0, 100_000
        ),
        max_attempts=_integer(layers, "routing.max_attempts", defaults.max_attempts, 1, 100),
        max_body_bytes=_size(layers, "limits.max_body_bytes", defaults.max_body_bytes),
        log_level=log_level,
    )


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_origins: Mapping[str, str] | None = None,
) -> Config:
    """Build the Config: file, then environment, then `overrides` (dotted keys, e.g. from CLI flags)."""
    layers = _Layers()
    if path is not None:
        _load_file(Path(path), layers)
    _load_env(os.environ if env is None else env, layers)
    for key, value in (overrides or {}).items():
        layers.set(key, value, (override_origins or {}).get(key, "command line"))
    return _validate(layers)


def parse_node_list(values: Sequence[str]) -> list[str]:
    """`--node a,b --node c` style values, flattened."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]
