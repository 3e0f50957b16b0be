"""Which routes need which scope.

A `user` key may use what the list below names, by path (any method: a wrong method still gets
Ollama's own 405): inference, embeddings and the fleet views, and read the proxy's own pages.
A `user` key may also submit a batch
embedding job. Everything else needs an `admin` key: the management routes, pinning a node with
`X-Sollol-Node`, a `/sollol/` request that is not a read, and any path this list does not name
(routes added by a newer Ollama included), so that a new route is never open by accident.

Without keys, the management routes (the ones that change what is on a node's disk, push it to a
registry, or use the node's ollama.com account) answer only clients on this machine, unless
`auth.open_management` is set; the rest answers everyone, as before.
"""

from __future__ import annotations

import enum
import ipaddress

from sollol_proxy.wire.routes import proxy_owned


class Need(enum.Enum):
    USER = "user"
    ADMIN = "admin"
    MANAGEMENT = "management"  # admin, and without keys only from this machine


USER_PATHS = frozenset(
    {
        "/",
        "/api/version",
        "/api/tags",
        "/api/ps",
        "/api/show",
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/status",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/responses",
        "/v1/messages",
        "/v1/audio/transcriptions",
    }
)
USER_PREFIXES = ("/v1/models/",)
MANAGEMENT_PATHS = frozenset(
    {"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/me", "/api/signout"}
)
MANAGEMENT_PREFIXES = ("/api/blobs/", "/api/user/keys/")
# Submitting a batch embedding job is inference, like /api/embed; cancelling or deleting a job
# (DELETE /sollol/batches/{id}) is not a read, so it stays an admin's.
USER_SUBMITS = frozenset({"/api/embed/batch"})
# Answered without a key: the liveness line a load balancer can probe.
OPEN_PATHS = frozenset({"/"})


def need(method: str, path: str) -> Need:
    bare = path.rstrip("/") or "/"  # Ollama redirects a trailing slash: the same route
    if bare in MANAGEMENT_PATHS or path.startswith(MANAGEMENT_PREFIXES):
        return Need.MANAGEMENT
    if proxy_owned(path):
        return Need.USER if method in ("GET", "HEAD") or bare in USER_SUBMITS else Need.ADMIN
    if bare in USER_PATHS or path.startswith(USER_PREFIXES):
        return Need.USER
    return Need.ADMIN


def is_open(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and path in OPEN_PATHS


def is_loopback(host: str | None) -> bool:
    """Whether a peer address is this machine (127.0.0.0/8, ::1, or IPv4-mapped loopback)."""
    try:
        address = ipaddress.ip_address((host or "").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
