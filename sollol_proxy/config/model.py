"""The one configuration object: YAML file, then SOLLOL_* environment, then CLI flags, then validation.

Every layer writes into one raw mapping and remembers where each key came from, so a bad value
is reported as `<origin>: <key>: <problem>` (origin = the file, the environment variable or the flag).
The layering and validation live in `loader.py`; this module holds the result and its parts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from sollol_proxy.config.access import AuthConfig, ClientLimits
from sollol_proxy.config.policies import (
    BatchPolicy,
    EmbedPolicy,
    OutlierPolicy,
    Priors,
    RetryPolicy,
    StatePolicy,
)

DEFAULT_OLLAMA_PORT = 11434
LOG_FORMATS = ("plain", "json")
ENGINES = ("fast", "aiohttp")  # listen.engine
BODIES_HELD = 16  # limits.max_body_memory's default, in bodies of limits.max_body_bytes
AUTO = "auto"  # a node setting the proxy learns from the node itself


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""

    def __init__(self, origin: str, key: str, problem: str) -> None:
        self.origin, self.key, self.problem = origin, key, problem
        super().__init__(f"{origin}: {key}: {problem}" if key else f"{origin}: {problem}")


@dataclass(frozen=True)
class NodeConfig:
    url: str
    name: str
    num_parallel: int | None = None  # the node's OLLAMA_NUM_PARALLEL; None: learned (`auto`)
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    vram_bytes: int | None = None  # memory for models; None: learned from /api/ps and evictions
    # the node's OLLAMA_MAX_LOADED_MODELS; None: learned from /api/ps (Ollama's auto value is 3)
    max_loaded_models: int | None = None
    priors: Priors | None = None  # this node's starting speeds, instead of routing.priors


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    # Ollama sends headers only with the first token, after a model load that may take minutes.
    first_byte: float = 900.0
    idle_read: float = 300.0
    # A non-streamed answer comes whole when generation is done: long, but never unbounded.
    non_streamed: float = 1800.0
    # endpoint -> time to first byte there, streamed or not (e.g. a short one for /api/embed)
    routes: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def first_byte_for(self, endpoint: str, stream: bool) -> float:
        """How long a node may take to start answering a request on `endpoint`."""
        bound = self.routes.get(endpoint)
        if bound is not None:
            return bound
        return self.first_byte if stream else self.non_streamed


@dataclass(frozen=True)
class QueueBand:
    """Limits for the requests whose priority is from `low` to `high` (inclusive)."""

    low: int
    high: int
    max_wait: float | None = None  # None: the queue's own max_wait
    max_length: int | None = None  # None: only the queue's own max_length applies

    @property
    def label(self) -> str:
        return f"{self.low}-{self.high}"


@dataclass(frozen=True)
class QueueConfig:
    enabled: bool = True
    max_length: int = 1000  # waiting requests, all priorities together
    max_wait: float = 300.0
    # A waiting request gains one priority level per `ageing` seconds, so none starves.
    ageing: float = 10.0
    # A freed slot goes to a request whose model is loaded there if its effective priority is
    # within this many levels of the most urgent request's: no model swap for a small reordering.
    affinity_window: float = 2.0
    bands: tuple[QueueBand, ...] = ()

    def band(self, priority: int) -> QueueBand | None:
        return next((b for b in self.bands if b.low <= priority <= b.high), None)


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = DEFAULT_OLLAMA_PORT
    nodes: tuple[NodeConfig, ...] = ()
    timeouts: Timeouts = Timeouts()
    health_interval: float = 5.0
    health_timeout: float = 3.0
    health_backoff_max: float = 30.0  # probe interval while a node is down doubles up to this
    health_jitter: float = 0.1  # probe intervals vary by up to this share, so probes spread out
    outlier: OutlierPolicy = field(default_factory=OutlierPolicy)
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    inventory_interval: float = 15.0
    # How long a fleet view (/api/tags, /api/ps, /v1/models) waits for each node's own list.
    inventory_view_timeout: float = 1.0
    strategy: str = "performance"
    model_strategies: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    priors: Priors = field(default_factory=Priors)
    decisions_kept: int = 500
    max_attempts: int = 3
    # The proxy may copy a shared system prompt into an idle slot itself (forward/warmup.py).
    warmups: bool = True
    max_body_bytes: int = 64 * 2**20
    # Request-body bytes held at once, all requests together (wire/body_budget.py); by default
    # BODIES_HELD bodies of the largest size.
    max_body_memory: int = BODIES_HELD * 64 * 2**20
    queue: QueueConfig = QueueConfig()
    # The request line plus all header lines, as Go's http.Server.MaxHeaderBytes counts them.
    max_header_bytes: int = 64 * 2**10
    max_connections: int = 1000
    shutdown_grace: float = 30.0  # how long in-flight requests may finish after SIGTERM
    reload_watch: bool = False  # reload when the configuration (file, hosts file) changes
    reload_interval: float = 2.0
    log_level: str = "info"
    log_format: str = "plain"  # plain (key=value) or json, for every log line
    metrics_port: int | None = None  # /metrics also on this port (it is always on the main one)
    embed: EmbedPolicy = field(default_factory=EmbedPolicy)
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    state: StatePolicy = field(default_factory=StatePolicy)
    cors_origins: tuple[str, ...] = ()  # as OLLAMA_ORIGINS; Ollama's defaults are always added
    auth: AuthConfig = field(default_factory=AuthConfig)
    client_limits: ClientLimits = field(default_factory=ClientLimits)
    # Host names the proxy answers besides loopback and private ones; set, the check is on even
    # when the proxy does not listen on loopback (Ollama's DNS-rebinding guard, reference 1.5).
    allowed_hosts: tuple[str, ...] = ()
    tls_cert: str | None = None  # PEM certificate chain: the listener speaks HTTPS
    tls_key: str | None = None
    # fast: the hot routes on the data plane (dataplane/); aiohttp: every request through aiohttp
    engine: str = "fast"

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration in the YAML layout (for `check-config`); secrets redacted."""
        return {
            "listen": {
                "host": self.host,
                "port": self.port,
                "allowed_hosts": list(self.allowed_hosts),
                "tls_cert": self.tls_cert,
                "tls_key": self.tls_key,
                "engine": self.engine,
            },
            "nodes": [
                {
                    "url": n.url,
                    "name": n.name,
                    "num_parallel": AUTO if n.num_parallel is None else n.num_parallel,
                    "labels": dict(n.labels),
                    "headers": {k: "<redacted>" for k in n.headers},
                    "vram": AUTO if n.vram_bytes is None else n.vram_bytes,
                    "max_loaded_models": AUTO
                    if n.max_loaded_models is None
                    else n.max_loaded_models,
                    "priors": asdict(n.priors) if n.priors else None,
                }
                for n in self.nodes
            ],
            "timeouts": {
                "connect": self.timeouts.connect,
                "first_byte": self.timeouts.first_byte,
                "idle_read": self.timeouts.idle_read,
                "non_streamed": self.timeouts.non_streamed,
                "routes": dict(self.timeouts.routes),
            },
            "health": {
                "interval": self.health_interval,
                "timeout": self.health_timeout,
                "backoff_max": self.health_backoff_max,
                "jitter": self.health_jitter,
            },
            "outlier": asdict(self.outlier),
            "retries": asdict(self.retries),
            "inventory": {
                "interval": self.inventory_interval,
                "view_timeout": self.inventory_view_timeout,
            },
            "routing": {
                "strategy": self.strategy,
                "models": dict(self.model_strategies),
                "max_attempts": self.max_attempts,
                "priors": asdict(self.priors),
                "decisions_kept": self.decisions_kept,
                "warmups": self.warmups,
            },
            "queue": {
                "enabled": self.queue.enabled,
                "max_length": self.queue.max_length,
                "max_wait": self.queue.max_wait,
                "ageing": self.queue.ageing,
                "affinity_window": self.queue.affinity_window,
                "bands": [
                    {"priorities": b.label, "max_wait": b.max_wait, "max_length": b.max_length}
                    for b in self.queue.bands
                ],
            },
            "limits": {
                "max_body_bytes": self.max_body_bytes,
                "max_body_memory": self.max_body_memory,
                "max_header_bytes": self.max_header_bytes,
                "max_connections": self.max_connections,
                "max_connections_per_client": self.client_limits.max_per_client,
                "header_timeout": self.client_limits.header_timeout,
                "body_timeout": self.client_limits.body_timeout,
                "body_min_rate": self.client_limits.body_min_rate,
                "idle_timeout": self.client_limits.idle_timeout,
                "tcp_keepalive": self.client_limits.tcp_keepalive,
                "write_timeout": self.client_limits.write_timeout,
            },
            "auth": {
                "keys": [
                    {**asdict(k), "sha256": "<redacted>", "models": list(k.models)}
                    for k in self.auth.keys
                ],
                "open_management": self.auth.open_management,
                "forward_authorization": self.auth.forward_authorization,
            },
            "shutdown": {"grace": self.shutdown_grace},
            "reload": {"watch": self.reload_watch, "interval": self.reload_interval},
            "log_level": self.log_level,
            "log_format": self.log_format,
            "metrics": {"port": self.metrics_port},
            "embed": asdict(self.embed),
            "batch": asdict(self.batch),
            "cors": {"origins": list(self.cors_origins)},
            "state": {**asdict(self.state), "redis_url": redact_password(self.state.redis_url)},
        }


def read_hosts_file(path: Path, origin: str) -> list[tuple[int, str]]:
    """The seed's hosts.txt: one `host:port` (or URL) per line, `#` comments, blank lines ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            origin, "hosts_file", f"{path}: not UTF-8 text (byte {exc.start})"
        ) from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(origin, "hosts_file", f"cannot read {path}: {reason}") from exc
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


_USERINFO = re.compile(r"(://[^/@:]*):[^/@]*@")


def redact_password(url: str) -> str:
    """`url` with the password of its user info replaced: it is printed and logged."""
    return _USERINFO.sub(r"\1:<redacted>@", url)


def normalize_node_url(raw: str) -> str:
    """Parse a node address the way OLLAMA_HOST is parsed: `host`, `host:port` or a URL.

    Errors show the address with any password in it redacted: they are printed and logged."""
    try:
        return _normalize_node_url(raw)
    except ValueError as exc:
        raise ValueError(redact_password(str(exc))) from None


def _normalize_node_url(raw: str) -> str:
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


def parse_node_list(values: Sequence[str]) -> list[str]:
    """`--node a,b --node c` style values, flattened."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]
