"""How `load_config()` builds a Config: the raw layers (config_layers.py), then validation.

A bad value is reported as `<origin>: <key>: <problem>`, the origin being the file, the
environment variable or the flag that set it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .config import (
    Config,
    ConfigError,
    NodeConfig,
    QueueBand,
    QueueConfig,
    Timeouts,
    normalize_node_url,
    read_hosts_file,
)
from .config_layers import Layers, load_env, load_file
from .learning import Priors
from .logformat import LOG_FORMATS
from .names import normalize_model
from .routing import STRATEGIES


def load_layers(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    overrides: Mapping[str, Any] | None,
    override_origins: Mapping[str, str] | None,
) -> Config:
    """The body of `config.load_config()`: file, then environment, then `overrides`."""
    layers = Layers()
    if path is not None:
        load_file(Path(path), layers)
    load_env(os.environ if env is None else env, layers)
    for key, value in (overrides or {}).items():
        layers.set(key, value, (override_origins or {}).get(key, "command line"))
    return _validate(layers)


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


# ---------------------------------------------------------------------------------------------
# Validation


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


def _seconds(layers: Layers, key: str, default: float) -> float:
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


def _integer(layers: Layers, key: str, default: int, low: int, high: int, value: Any = None) -> int:
    value = layers.values.get(key, default) if value is None else value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise layers.error(key, f"expected an integer from {low} to {high}, got {value!r}")
    return value


def _size(layers: Layers, key: str, default: int, value: Any = None) -> int:
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


def _boolean(layers: Layers, key: str, default: bool) -> bool:
    value = layers.values.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise layers.error(key, f"expected true or false, got {value!r}")


def _string_map(layers: Layers, key: str, value: Any) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise layers.error(key, "must be a mapping of names to strings")
    return MappingProxyType({k: str(v) for k, v in value.items()})


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token


def _headers(layers: Layers, key: str, value: Any) -> Mapping[str, str]:
    headers = _string_map(layers, key, value)
    for name, text in headers.items():
        if not _HEADER_NAME.match(name):
            raise layers.error(f"{key}.{name}", "is not a valid header name")
        if any(c in text for c in "\r\n\0"):
            raise layers.error(f"{key}.{name}", "must not contain line breaks or NUL")
    return headers


def _node(layers: Layers, index: int, raw: Any, priors: Priors) -> NodeConfig:
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


def _priors(layers: Layers, key: str, value: Any, base: Priors) -> Priors:
    if not isinstance(value, dict):
        raise layers.error(key, "must be a mapping of prior names to numbers")
    known = Priors.__dataclass_fields__
    numbers: dict[str, float] = {}
    for name, raw in value.items():
        if name not in known:
            raise layers.error(f"{key}.{name}", f"unknown prior (known: {', '.join(known)})")
        try:  # YAML reads 1.5e9 (no sign in the exponent) as a string
            number = float(raw) if not isinstance(raw, bool) else -1.0
        except (TypeError, ValueError):
            number = -1.0
        if not number > 0 or number == float("inf"):
            raise layers.error(f"{key}.{name}", f"expected a positive number, got {raw!r}")
        numbers[name] = number
    return replace(base, **numbers)


def _model_strategies(layers: Layers) -> Mapping[str, str]:
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


def _nodes(layers: Layers, priors: Priors) -> tuple[NodeConfig, ...]:
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


def _priority_range(layers: Layers, key: str, value: Any) -> tuple[int, int]:
    text = str(value).strip()
    low, _, high = text.partition("-")
    if not high:
        high = low
    if not (low.strip().isdigit() and high.strip().isdigit()):
        raise layers.error(key, f"expected a priority or a range like '8-10', got {value!r}")
    first, last = int(low), int(high)
    if not 0 <= first <= last <= 10:
        raise layers.error(key, f"expected priorities from 0 to 10, low to high, got {value!r}")
    return first, last


def _bands(layers: Layers, default_wait: float) -> tuple[QueueBand, ...]:
    raw = layers.values.get("queue.bands") or []
    if not isinstance(raw, list):
        raise layers.error("queue.bands", "must be a list of {priorities, max_wait, max_length}")
    bands: list[QueueBand] = []
    for index, entry in enumerate(raw):
        key = f"queue.bands[{index}]"
        if not isinstance(entry, dict) or "priorities" not in entry:
            raise layers.error(key, "must be a mapping with 'priorities' (e.g. '8-10')")
        unknown = set(entry) - {"priorities", "max_wait", "max_length"}
        if unknown:
            raise layers.error(
                f"{key}.{sorted(unknown)[0]}",
                "unknown key (known: max_length, max_wait, priorities)",
            )
        low, high = _priority_range(layers, f"{key}.priorities", entry["priorities"])
        for other in bands:
            if low <= other.high and other.low <= high:
                raise layers.error(
                    f"{key}.priorities", f"{low}-{high} overlaps the band {other.label}"
                )
        scoped = Layers()
        scoped.values = {k: v for k, v in entry.items() if k != "priorities"}
        scoped.origins = dict.fromkeys(scoped.values, layers.origins.get("queue.bands", "defaults"))
        try:
            max_wait = _seconds(scoped, "max_wait", default_wait) if "max_wait" in entry else None
            max_length = (
                _integer(scoped, "max_length", 0, 0, 1_000_000) if "max_length" in entry else None
            )
        except ConfigError as exc:
            raise ConfigError(exc.origin, f"{key}.{exc.key}", exc.problem) from exc
        bands.append(QueueBand(low, high, max_wait, max_length))
    return tuple(bands)


def _queue(layers: Layers) -> QueueConfig:
    defaults = QueueConfig()
    max_wait = _seconds(layers, "queue.max_wait", defaults.max_wait)
    window = layers.values.get("queue.affinity_window", defaults.affinity_window)
    if isinstance(window, bool) or not isinstance(window, int | float) or not 0 <= window <= 10:
        raise layers.error(
            "queue.affinity_window", f"expected priority levels from 0 to 10, got {window!r}"
        )
    return QueueConfig(
        enabled=_boolean(layers, "queue.enabled", defaults.enabled),
        max_length=_integer(layers, "queue.max_length", defaults.max_length, 0, 1_000_000),
        max_wait=max_wait,
        ageing=_seconds(layers, "queue.ageing", defaults.ageing),
        affinity_window=float(window),
        bands=_bands(layers, max_wait),
    )


def _validate(layers: Layers) -> Config:
    from . import config_resilience as resilience  # it uses this module's value parsers

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
    log_format = str(layers.values.get("log_format", defaults.log_format)).lower()
    if log_format not in LOG_FORMATS:
        raise layers.error("log_format", f"expected plain or json, got {log_format!r}")
    metrics_port = layers.values.get("metrics.port")
    priors = _priors(layers, "routing.priors", layers.values.get("routing.priors") or {}, Priors())
    return Config(
        host=host,
        port=_integer(layers, "listen.port", defaults.port, 0, 65535),
        nodes=_nodes(layers, priors),
        timeouts=Timeouts(
            connect=_seconds(layers, "timeouts.connect", defaults.timeouts.connect),
            first_byte=_seconds(layers, "timeouts.first_byte", defaults.timeouts.first_byte),
            idle_read=_seconds(layers, "timeouts.idle_read", defaults.timeouts.idle_read),
            non_streamed=_seconds(layers, "timeouts.non_streamed", defaults.timeouts.non_streamed),
            routes=resilience.route_timeouts(layers),
        ),
        health_interval=_seconds(layers, "health.interval", defaults.health_interval),
        health_timeout=_seconds(layers, "health.timeout", defaults.health_timeout),
        health_backoff_max=_seconds(layers, "health.backoff_max", defaults.health_backoff_max),
        health_jitter=resilience.fraction(layers, "health.jitter", defaults.health_jitter, 0.5),
        outlier=resilience.outlier(layers),
        retries=resilience.retries(layers),
        inventory_interval=_seconds(layers, "inventory.interval", defaults.inventory_interval),
        strategy=strategy,
        model_strategies=_model_strategies(layers),
        priors=priors,
        decisions_kept=_integer(
            layers, "routing.decisions_kept", defaults.decisions_kept, 0, 100_000
        ),
        max_attempts=_integer(layers, "routing.max_attempts", defaults.max_attempts, 1, 100),
        max_body_bytes=_size(layers, "limits.max_body_bytes", defaults.max_body_bytes),
        queue=_queue(layers),
        max_header_bytes=_size(layers, "limits.max_header_bytes", defaults.max_header_bytes),
        max_connections=_integer(
            layers, "limits.max_connections", defaults.max_connections, 1, 1_000_000
        ),
        shutdown_grace=_seconds(layers, "shutdown.grace", defaults.shutdown_grace),
        reload_watch=_boolean(layers, "reload.watch", defaults.reload_watch),
        reload_interval=_seconds(layers, "reload.interval", defaults.reload_interval),
        log_level=log_level,
        log_format=log_format,
        metrics_port=None
        if metrics_port is None
        else _integer(layers, "metrics.port", 0, 1, 65535, metrics_port),
    )
