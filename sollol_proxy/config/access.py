"""Who may use the proxy and how hard: API keys with scopes and per-key limits (`auth.*`), and
the bounds on every client connection (`limits.*` beyond sizes). Validated in access_loader.py;
applied by `guard/` (keys, scopes, the Host check) and `lifecycle/limits.py` (connections)."""

from __future__ import annotations

from dataclasses import dataclass

USER, ADMIN = "user", "admin"
SCOPES = (USER, ADMIN)
MAX_PRIORITY = 10


@dataclass(frozen=True)
class ApiKey:
    name: str  # shown in logs and metrics (a bounded label), never the key itself
    sha256: str  # lower-case hex digest of the key: the key is not stored
    scope: str = USER  # user: inference and fleet views; admin: also management and pinning
    max_priority: int = MAX_PRIORITY  # a request's priority is clamped to this
    models: tuple[str, ...] = ()  # globs of normalised model names; empty: every model
    max_concurrent: int | None = None  # requests in progress at once
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None  # prompt plus output tokens, as Ollama counts them


@dataclass(frozen=True)
class AuthConfig:
    keys: tuple[ApiKey, ...] = ()
    # With no keys: management routes answer clients on other machines too.
    open_management: bool = False
    # With keys: the client's Authorization (its proxy key) also goes to the node.
    forward_authorization: bool = False


@dataclass(frozen=True)
class ClientLimits:
    """Bounds on what one client connection may hold; none of them limits a stream's length."""

    header_timeout: float = 10.0  # from the connection (or the next request's first byte) to
    # the end of the request's headers
    body_timeout: float = 30.0  # longest silence while a request body arrives
    body_min_rate: int = 16 * 1024  # bytes per second a body must average after body_timeout
    idle_timeout: float = 120.0  # a kept-alive connection with no request is closed after this
    max_per_client: int = 256  # open connections from one client address
    tcp_keepalive: float = 15.0  # idle time before TCP keep-alive probes (client and node sockets)
    write_timeout: float = 120.0  # longest a client may leave an answer unread before it is cut
