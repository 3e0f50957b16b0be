"""How `load_config()` builds a Config: the raw layers (layers.py), then validation.

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

import sollol_proxy.config.access_loader as access  # its validators share the value parsers
import sollol_proxy.config.embed as embed  # the embed.* and batch.* validators
import sollol_proxy.config.resilience as resilience  # its validators share the value parsers
import sollol_proxy.config.state as state  # the state.* validator
from sollol_proxy.config.layers import Layers, load_env, load_file
from sollol_proxy.config.model import (
    AUTO,
    BODIES_HELD,
    ENGINES,
    LOG_FORMATS,
    Config,
    ConfigError,
    NodeConfig,
    Timeouts,
    normalize_node_url,
    read_hosts_file,
)
from sollol_proxy.config.origins import cors_origins
from sollol_proxy.config.policies import Priors
from sollol_proxy.config.queue import queue
from sollol_proxy.config.values import (
    absent_as,
    boolean,
    headers,
    integer,
    seconds,
    size,
    string_map,
)
from sollol_proxy.routing import STRATEGIES
from sollol_proxy.wire.names import normalize_model


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
    name = entry.get("name")
    if name is None:
        name = urlsplit(url).netloc
    if (
        not isinstance(name, str)
        or not re.fullmatch(r"[A-Za-z0-9._:\[\]-]+", name)
        or name == "all"
    ):
        raise layers.error(
            f"{key}.name",
            f"must be letters, digits, '.', '_', ':', '-' and not 'all', got {name!r}",
        )
    vram = entry.get("vram")
    return NodeConfig(
        url=url,
        name=name,
        num_parallel=_auto_int(layers, f"{key}.num_parallel", entry.get("num_parallel")),
        labels=string_map(layers, f"{key}.labels", entry.get("labels")),
        headers=headers(layers, f"{key}.headers", entry.get("headers")),
        vram_bytes=None if _is_auto(vram) else size(layers, f"{key}.vram", 0, vram),
        max_loaded_models=_auto_int(
            layers, f"{key}.max_loaded_models", entry.get("max_loaded_models")
        ),
        priors=_priors(layers, f"{key}.priors", entry["priors"], priors)
        if "priors" in entry
        else None,
    )


def _auto_int(layers: Layers, key: str, value: Any) -> int | None:
    """A node setting the proxy can learn: absent or `auto` (None), or an integer it is told."""
    if _is_auto(value):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise layers.error(key, f"expected auto or an integer from 1 to 1024, got {value!r}")
    return value


def _is_auto(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == AUTO)


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
    value = absent_as(layers, "routing.models", {})
    if not isinstance(value, dict):
        raise layers.error("routing.models", "must map model names to strategy names")
    for model, strategy in value.items():
        if not isinstance(strategy, str) or strategy not in STRATEGIES:
            raise layers.error(
                f"routing.models.{model}",
                f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})",
            )
    return MappingProxyType({normalize_model(str(m)): str(s) for m, s in value.items()})


def _nodes(layers: Layers, priors: Priors) -> tuple[NodeConfig, ...]:
    raw_nodes = absent_as(layers, "nodes", [])
    if not isinstance(raw_nodes, list):
        raise layers.error("nodes", "must be a list of node URLs or mappings")
    nodes = [_node(layers, i, raw, priors) for i, raw in enumerate(raw_nodes)]
    # Where each node was declared, so that a duplicate is reported at its own line.
    declared = [(layers.origins.get("nodes", "defaults"), f"nodes[{i}]") for i in range(len(nodes))]
    hosts_file = absent_as(layers, "hosts_file", "")
    if not isinstance(hosts_file, str):
        raise layers.error("hosts_file", f"expected a file path, got {hosts_file!r}")
    if hosts_file:  # SOLLOL_HOSTS_FILE= (empty) is not set
        origin = layers.origins["hosts_file"]
        path = Path(hosts_file)
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
        # Blame the file when nothing set `nodes` at all: it is the one that lacks them.
        origin = layers.origins.get("nodes") or layers.file_origin or "defaults"
        raise ConfigError(
            origin,
            "nodes",
            "no Ollama nodes configured: set SOLLOL_NODES (e.g. "
            "SOLLOL_NODES=http://gpu1:11434,http://gpu2:11434), 'nodes' or 'hosts_file'",
        )
    return tuple(nodes)


def _validate(layers: Layers) -> Config:
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
    port = integer(layers, "listen.port", defaults.port, 0, 65535)
    metrics_port = layers.values.get("metrics.port")
    if metrics_port is not None:
        metrics_port = integer(layers, "metrics.port", 0, 1, 65535, metrics_port)
        # Both listen on listen.host: the second to bind would take the port from the first.
        if metrics_port == port:
            raise layers.error("metrics.port", f"must differ from listen.port ({port})")
    priors = _priors(layers, "routing.priors", absent_as(layers, "routing.priors", {}), Priors())
    tls_cert, tls_key = access.tls(layers)
    engine = str(layers.values.get("listen.engine", defaults.engine)).lower()
    if engine not in ENGINES:
        raise layers.error("listen.engine", f"expected fast or aiohttp, got {engine!r}")
    max_body = size(layers, "limits.max_body_bytes", defaults.max_body_bytes)
    body_memory = size(layers, "limits.max_body_memory", BODIES_HELD * max_body)
    if body_memory < max_body:  # a body the limit allows could then never be read
        raise layers.error(
            "limits.max_body_memory",
            f"must be at least limits.max_body_bytes ({max_body}), got {body_memory}",
            "limits.max_body_bytes",
        )
    return Config(
        host=host,
        port=port,
        nodes=_nodes(layers, priors),
        timeouts=Timeouts(
            connect=seconds(layers, "timeouts.connect", defaults.timeouts.connect),
            first_byte=seconds(layers, "timeouts.first_byte", defaults.timeouts.first_byte),
            idle_read=seconds(layers, "timeouts.idle_read", defaults.timeouts.idle_read),
            non_streamed=seconds(layers, "timeouts.non_streamed", defaults.timeouts.non_streamed),
            routes=resilience.route_timeouts(layers),
        ),
        health_interval=seconds(layers, "health.interval", defaults.health_interval),
        health_timeout=seconds(layers, "health.timeout", defaults.health_timeout),
        health_backoff_max=seconds(layers, "health.backoff_max", defaults.health_backoff_max),
        health_jitter=resilience.fraction(layers, "health.jitter", defaults.health_jitter, 0.5),
        outlier=resilience.outlier(layers),
        retries=resilience.retries(layers),
        inventory_interval=seconds(layers, "inventory.interval", defaults.inventory_interval),
        inventory_view_timeout=seconds(
            layers, "inventory.view_timeout", defaults.inventory_view_timeout
        ),
        strategy=strategy,
        model_strategies=_model_strategies(layers),
        priors=priors,
        decisions_kept=integer(
            layers, "routing.decisions_kept", defaults.decisions_kept, 0, 100_000
        ),
        max_attempts=integer(layers, "routing.max_attempts", defaults.max_attempts, 1, 100),
        warmups=boolean(layers, "routing.warmups", defaults.warmups),
        max_body_bytes=max_body,
        max_body_memory=body_memory,
        queue=queue(layers),
        max_header_bytes=size(layers, "limits.max_header_bytes", defaults.max_header_bytes),
        max_connections=integer(
            layers, "limits.max_connections", defaults.max_connections, 1, 1_000_000
        ),
        shutdown_grace=seconds(layers, "shutdown.grace", defaults.shutdown_grace),
        reload_watch=boolean(layers, "reload.watch", defaults.reload_watch),
        reload_interval=seconds(layers, "reload.interval", defaults.reload_interval),
        log_level=log_level,
        log_format=log_format,
        metrics_port=metrics_port,
        embed=embed.embed(layers),
        batch=embed.batch(layers),
        state=state.state(layers),
        cors_origins=cors_origins(layers),
        auth=access.auth(layers),
        client_limits=access.client_limits(layers),
        allowed_hosts=access.allowed_hosts(layers),
        tls_cert=tls_cert,
        tls_key=tls_key,
        engine=engine,
    )


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_origins: Mapping[str, str] | None = None,
) -> Config:
    """Build the Config: file, then environment, then `overrides` (dotted keys, e.g. from CLI flags)."""
    return load_layers(path, env, overrides, override_origins)
