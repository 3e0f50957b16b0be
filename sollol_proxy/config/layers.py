"""The raw layers of a configuration: YAML file, then SOLLOL_* environment, then overrides.

Every layer writes into one flat `dotted.key -> value` mapping that remembers where each key came
from, so that validation can blame the right file, variable or flag.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sollol_proxy.config.model import ConfigError

_ENV_KEYS: dict[str, str] = {
    "SOLLOL_HOST": "listen.host",
    "SOLLOL_PORT": "listen.port",
    "SOLLOL_NODES": "nodes",
    "SOLLOL_HOSTS_FILE": "hosts_file",
    "SOLLOL_CONNECT_TIMEOUT": "timeouts.connect",
    "SOLLOL_FIRST_BYTE_TIMEOUT": "timeouts.first_byte",
    "SOLLOL_IDLE_READ_TIMEOUT": "timeouts.idle_read",
    "SOLLOL_NON_STREAMED_TIMEOUT": "timeouts.non_streamed",
    "SOLLOL_HEALTH_INTERVAL": "health.interval",
    "SOLLOL_HEALTH_TIMEOUT": "health.timeout",
    "SOLLOL_INVENTORY_INTERVAL": "inventory.interval",
    "SOLLOL_STRATEGY": "routing.strategy",
    "SOLLOL_MAX_ATTEMPTS": "routing.max_attempts",
    "SOLLOL_MAX_BODY_BYTES": "limits.max_body_bytes",
    "SOLLOL_MAX_BODY_MEMORY": "limits.max_body_memory",
    "SOLLOL_MAX_HEADER_BYTES": "limits.max_header_bytes",
    "SOLLOL_MAX_CONNECTIONS": "limits.max_connections",
    "SOLLOL_SHUTDOWN_GRACE": "shutdown.grace",
    "SOLLOL_RELOAD_WATCH": "reload.watch",
    "SOLLOL_LOG_LEVEL": "log_level",
    "SOLLOL_QUEUE_ENABLED": "queue.enabled",
    "SOLLOL_QUEUE_MAX_LENGTH": "queue.max_length",
    "SOLLOL_QUEUE_MAX_WAIT": "queue.max_wait",
    "SOLLOL_LOG_FORMAT": "log_format",
    "SOLLOL_METRICS_PORT": "metrics.port",
    "SOLLOL_DATA_DIR": "batch.data_dir",
    "SOLLOL_ORIGINS": "cors.origins",
    "SOLLOL_ALLOWED_HOSTS": "listen.allowed_hosts",
    "SOLLOL_TLS_CERT": "listen.tls_cert",
    "SOLLOL_TLS_KEY": "listen.tls_key",
    "SOLLOL_ENGINE": "listen.engine",
    "SOLLOL_OPEN_MANAGEMENT": "auth.open_management",
    "SOLLOL_STATE_BACKEND": "state.backend",
    "SOLLOL_REDIS_URL": "state.redis_url",
}

_SECTIONS: dict[str, set[str]] = {
    "listen": {"host", "port", "allowed_hosts", "tls_cert", "tls_key", "engine"},
    "timeouts": {"connect", "first_byte", "idle_read", "non_streamed", "routes"},
    "health": {"interval", "timeout", "backoff_max", "jitter"},
    "outlier": {"consecutive_failures", "base_ejection", "max_ejection", "busy_cooldown"},
    "retries": {"budget_ratio", "min_concurrent", "backoff_base", "backoff_max"},
    "inventory": {"interval", "view_timeout"},
    "routing": {"strategy", "models", "max_attempts", "priors", "decisions_kept", "warmups"},
    "queue": {"enabled", "max_length", "max_wait", "ageing", "affinity_window", "bands"},
    "metrics": {"port"},
    "limits": {
        "max_body_bytes",
        "max_body_memory",
        "max_header_bytes",
        "max_connections",
        "max_connections_per_client",
        "header_timeout",
        "body_timeout",
        "body_min_rate",
        "idle_timeout",
        "tcp_keepalive",
        "write_timeout",
    },
    "auth": {"keys", "open_management", "forward_authorization"},
    "shutdown": {"grace"},
    "reload": {"watch", "interval"},
    "embed": {
        "split",
        "split_min_inputs",
        "min_batch",
        "max_batch",
        "coalesce",
        "coalesce_max_inputs",
    },
    "batch": {
        "data_dir",
        "max_docs_per_job",
        "max_docs_total",
        "min_batch",
        "max_batch",
        "retention",
    },
    "cors": {"origins"},
    "state": {"backend", "redis_url", "key_prefix", "lease_ttl", "timeout"},
}
_TOP_LEVEL = {*_SECTIONS, "nodes", "hosts_file", "log_level", "log_format"}


class Layers:
    """A flat `dotted.key -> value` mapping that remembers the origin of every key."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.origins: dict[str, str] = {}
        self.base_dir = Path.cwd()
        self.file_origin = ""

    def set(self, key: str, value: Any, origin: str) -> None:
        self.values[key] = value
        self.origins[key] = origin

    def error(self, key: str, problem: str, *related: str) -> ConfigError:
        """An error at `key`, blamed on whoever set it or the section it is in; when `key` is
        at its default, on whoever set the first of the `related` keys it must agree with."""
        for candidate in (key, *related):
            if (origin := self._origin(candidate)) is not None:
                return ConfigError(origin, key, problem)
        return ConfigError("defaults", key, problem)

    def _origin(self, key: str) -> str | None:
        for end in range(len(key), 0, -1):
            if key[:end] in self.origins and (end == len(key) or key[end] in ".["):
                return self.origins[key[:end]]
        return None


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: PyYAML
    keeps the last silently, and `listen: {port: 1}` then `listen: {host: x}` lost the port."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may repeat keys
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # unhashable: the safe loader refuses it with its own message
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_file(path: Path, layers: Layers) -> None:
    origin = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # e.g. caught half-written by reload.watch
        raise ConfigError(origin, "", f"not UTF-8 text (byte {exc.start})") from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(origin, "", f"cannot read config file: {reason}") from exc
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(
            origin, "", f"{where}invalid YAML: {getattr(exc, 'problem', exc)}"
        ) from exc
    except RecursionError:  # PyYAML recurses once per level: `[[[[...` a thousand deep
        raise ConfigError(origin, "", "invalid YAML: nested too deeply") from None
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


# Read by the command line itself (the file to load), not a setting.
_CLI_ENV = {"SOLLOL_CONFIG"}

# The variables Kubernetes gives every pod for each Service of its namespace (service links):
# the deployment's own `sollol-proxy` and `sollol-redis` Services make SOLLOL_PROXY_PORT,
# SOLLOL_REDIS_SERVICE_HOST and the like. Recognized by name and value, so that a misspelt
# setting is not taken for one.
_SERVICE_LINK = re.compile(
    r"SOLLOL_\w+?_(?:(?P<host>SERVICE_HOST)|(?P<port>SERVICE_PORT(?:_\w+)?)"
    r"|(?P<url>PORT)|PORT_\d+_(?:TCP|UDP|SCTP)(?:_(?P<field>PROTO|PORT|ADDR))?)"
)
_LINK_URL = re.compile(r"(?:tcp|udp|sctp)://[0-9A-Fa-f.:\[\]]+:\d+")


def _service_link(var: str, value: str) -> bool:
    match = _SERVICE_LINK.fullmatch(var)
    if match is None:
        return False
    if match["host"] or match["field"] == "ADDR":
        try:
            return bool(ipaddress.ip_address(value))
        except ValueError:
            return False
    if match["port"] or match["field"] == "PORT":
        return value.isascii() and value.isdigit()
    if match["field"] == "PROTO":
        return value in ("tcp", "udp", "sctp")
    return _LINK_URL.fullmatch(value) is not None  # X_PORT and X_PORT_n_TCP: tcp://ip:port


def load_env(env: Mapping[str, str], layers: Layers) -> None:
    # A misspelt or guessed variable (SOLLOL_PROT, SOLLOL_QUEUE_AGEING) is refused like an
    # unknown key of the file: it never silently leaves the setting at its default.
    for var in sorted(env):
        if (
            var.startswith("SOLLOL_")
            and var not in _ENV_KEYS
            and var not in _CLI_ENV
            and not _service_link(var, env[var])
        ):
            known = ", ".join(sorted({*_ENV_KEYS, *_CLI_ENV}))
            raise ConfigError(
                f"environment {var}",
                "",
                f"unknown variable; other settings are keys of the config file (known: {known})",
            )
    for var, key in _ENV_KEYS.items():
        if var in env:
            value: Any = env[var]
            if key == "nodes":
                value = [part.strip() for part in value.split(",") if part.strip()]
            layers.set(key, value, f"environment {var}")
