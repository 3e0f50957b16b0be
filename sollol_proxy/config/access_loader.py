"""Validation of who may use the proxy (`auth.*`), the connection bounds (`limits.*` beyond sizes)
and the listener's exposure (`listen.allowed_hosts`, `listen.tls_cert`, `listen.tls_key`)."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

from sollol_proxy.config.access import (
    MAX_PRIORITY,
    SCOPES,
    USER,
    ApiKey,
    AuthConfig,
    ClientLimits,
)
from sollol_proxy.config.layers import Layers
from sollol_proxy.config.values import absent_as, boolean, integer, seconds, size

_KEY_FIELDS = {
    "name",
    "sha256",
    "scope",
    "max_priority",
    "models",
    "max_concurrent",
    "requests_per_minute",
    "tokens_per_minute",
}
# Key names are metric labels and log values: short and plain.
_KEY_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_HOST = re.compile(r"(\*\.)?[A-Za-z0-9._:-]+")
# Linux's largest TCP_KEEPIDLE and TCP_KEEPINTVL: beyond it setsockopt fails, and with it every
# connection to a node.
MAX_KEEPALIVE_S = 32767


def _key(layers: Layers, index: int, raw: Any) -> ApiKey:
    key = f"auth.keys[{index}]"
    if not isinstance(raw, dict):
        raise layers.error(key, "must be a mapping with 'name' and 'sha256'")
    unknown = set(raw) - _KEY_FIELDS
    if unknown:
        known = ", ".join(sorted(_KEY_FIELDS))
        raise layers.error(f"{key}.{sorted(unknown)[0]}", f"unknown key (known: {known})")
    name = raw.get("name")
    if not isinstance(name, str) or not _KEY_NAME.fullmatch(name):
        raise layers.error(f"{key}.name", f"expected 1-64 letters, digits or '._:-', got {name!r}")
    digest = raw.get("sha256")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise layers.error(
            f"{key}.sha256",
            "expected the key's SHA-256 as 64 hex digits (`sollol-proxy keys new` prints one)",
        )
    scope = raw.get("scope", USER)
    if scope not in SCOPES:
        raise layers.error(f"{key}.scope", f"expected user or admin, got {scope!r}")
    models = raw.get("models")
    if models is None:
        models = []
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not all(isinstance(m, str) and m.strip() for m in models):
        raise layers.error(f"{key}.models", "must be a list of model names or globs")

    def optional(field: str, low: int, high: int) -> int | None:
        value = raw.get(field)
        return None if value is None else integer(layers, f"{key}.{field}", 0, low, high, value)

    return ApiKey(
        name=name,
        sha256=digest.lower(),
        scope=scope,
        max_priority=integer(
            layers, f"{key}.max_priority", 0, 0, MAX_PRIORITY, raw.get("max_priority", 10)
        ),
        models=tuple(m.strip() for m in models),
        max_concurrent=optional("max_concurrent", 1, 1_000_000),
        requests_per_minute=optional("requests_per_minute", 1, 100_000_000),
        tokens_per_minute=optional("tokens_per_minute", 1, 10**12),
    )


def auth(layers: Layers) -> AuthConfig:
    raw = absent_as(layers, "auth.keys", [])
    if not isinstance(raw, list):
        raise layers.error("auth.keys", "must be a list of {name, sha256, scope, ...}")
    keys = [_key(layers, i, entry) for i, entry in enumerate(raw)]
    for what in ("name", "sha256"):
        seen: set[str] = set()
        for index, entry in enumerate(keys):
            value = getattr(entry, what)
            if value in seen:
                raise layers.error(f"auth.keys[{index}].{what}", f"duplicate key {what}")
            seen.add(value)
    defaults = AuthConfig()
    return AuthConfig(
        keys=tuple(keys),
        open_management=boolean(layers, "auth.open_management", defaults.open_management),
        forward_authorization=boolean(
            layers, "auth.forward_authorization", defaults.forward_authorization
        ),
    )


def client_limits(layers: Layers) -> ClientLimits:
    d = ClientLimits()
    return ClientLimits(
        header_timeout=seconds(layers, "limits.header_timeout", d.header_timeout),
        body_timeout=seconds(layers, "limits.body_timeout", d.body_timeout),
        body_min_rate=size(layers, "limits.body_min_rate", d.body_min_rate),
        idle_timeout=seconds(layers, "limits.idle_timeout", d.idle_timeout),
        max_per_client=integer(
            layers, "limits.max_connections_per_client", d.max_per_client, 1, 1_000_000
        ),
        tcp_keepalive=seconds(
            layers, "limits.tcp_keepalive", d.tcp_keepalive, most=MAX_KEEPALIVE_S
        ),
        write_timeout=seconds(layers, "limits.write_timeout", d.write_timeout),
    )


def allowed_hosts(layers: Layers) -> tuple[str, ...]:
    key = "listen.allowed_hosts"
    value = absent_as(layers, key, [])
    if isinstance(value, str):  # SOLLOL_ALLOWED_HOSTS: a comma list
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise layers.error(key, "must be a list of host names (e.g. ollama.example.com, *.lan)")
    hosts = []
    for entry in value:
        text = str(entry).strip().lower().strip("[]")
        if not _HOST.fullmatch(text):
            raise layers.error(key, f"{entry!r} is not a host name, an IP or '*.' and a domain")
        hosts.append(text)
    return tuple(hosts)


def _path(layers: Layers, key: str) -> Path | None:
    value = layers.values.get(key)
    if value in (None, ""):
        return None
    path = Path(str(value))
    if not path.is_absolute() and layers.origins.get(key) == layers.file_origin:
        path = layers.base_dir / path  # relative to the config file that names it
    return path


def tls(layers: Layers) -> tuple[str | None, str | None]:
    """The certificate chain and key files, checked by loading them as the listener will."""
    cert, key = _path(layers, "listen.tls_cert"), _path(layers, "listen.tls_key")
    if (cert is None) != (key is None):
        missing = "listen.tls_key" if key is None else "listen.tls_cert"
        given = "listen.tls_cert" if key is None else "listen.tls_key"
        raise layers.error(missing, "is required when the other of tls_cert/tls_key is set", given)
    if cert is None or key is None:
        return None, None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError, ValueError) as exc:  # ValueError: a NUL in a path
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise layers.error("listen.tls_cert", f"cannot load {cert} with {key}: {reason}") from exc
    return str(cert), str(key)
