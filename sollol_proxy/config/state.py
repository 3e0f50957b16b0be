"""Validation of the `state.*` settings: local state, or state shared by replicas in Redis.

Setting `state.redis_url` (or `SOLLOL_REDIS_URL`) alone turns Redis on: giving the address is
the intent, and a forgotten `backend: redis` would otherwise run replicas that ignore each other.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from sollol_proxy.config.layers import Layers
from sollol_proxy.config.model import redact_password
from sollol_proxy.config.policies import StatePolicy
from sollol_proxy.config.values import seconds

BACKENDS = ("local", "redis")
REDIS_SCHEMES = ("redis", "rediss", "unix")
_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def state(layers: Layers) -> StatePolicy:
    defaults = StatePolicy()
    url = layers.values.get("state.redis_url", defaults.redis_url)
    if not isinstance(url, str):
        raise layers.error("state.redis_url", f"expected a redis:// URL, got {url!r}")
    url = url.strip()
    backend = layers.values.get("state.backend", "redis" if url else defaults.backend)
    if backend not in BACKENDS:
        raise layers.error(
            "state.backend", f"expected one of {', '.join(BACKENDS)}, got {backend!r}"
        )
    if backend == "redis":
        _check_url(layers, url)
    prefix = layers.values.get("state.key_prefix", defaults.key_prefix)
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise layers.error(
            "state.key_prefix",
            f"expected 1 to 64 letters, digits or _.:- characters, got {prefix!r}",
        )
    return StatePolicy(
        backend=backend,
        redis_url=url,
        key_prefix=prefix,
        lease_ttl=seconds(layers, "state.lease_ttl", defaults.lease_ttl),
        timeout=seconds(layers, "state.timeout", defaults.timeout),
    )


def _check_url(layers: Layers, url: str) -> None:
    if not url:
        raise layers.error(
            "state.backend", "redis needs state.redis_url (or SOLLOL_REDIS_URL), which is not set"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise layers.error("state.redis_url", f"{exc} in {redact_password(url)!r}") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise layers.error(
            "state.redis_url",
            f"expected a {', '.join(s + '://' for s in REDIS_SCHEMES)} URL, got {redact_password(url)!r}",
        )
    if parts.scheme == "unix" and not parts.path:
        raise layers.error(
            "state.redis_url", f"a unix:// URL needs a socket path, got {redact_password(url)!r}"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise layers.error("state.redis_url", f"no host in {redact_password(url)!r}")
    del port  # parsed only to reject a bad port
