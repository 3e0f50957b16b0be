"""The Ollama routes the proxy treats specially (reference section 2), and what it needs from each.

Anything not listed, or a listed path with a method Ollama does not accept there, is forwarded to
a healthy node as it is: the node then answers exactly as Ollama does (404 text, 405 with `Allow`,
trailing-slash redirects, routes newer than this table).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    ROOT = "root"  # GET|HEAD /
    VERSION = "version"  # fleet-wide /api/version
    TAGS = "tags"  # fleet-wide /api/tags
    PS = "ps"  # fleet-wide /api/ps
    V1_MODELS = "v1_models"  # fleet-wide /v1/models
    MODEL = "model"  # routed by the model named in the body
    MODEL_PATH = "model_path"  # routed by the model named in the path (/v1/models/:model)
    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"
    COPY = "copy"
    CREATE = "create"
    BLOB = "blob"  # /api/blobs/:digest, body streamed, never buffered
    ANY = "any"  # any healthy node answers
    SOLLOL = "sollol"  # the proxy's own endpoints (under /sollol/, and PROXY_OWNED)


@dataclass(frozen=True, slots=True)
class Route:
    kind: Kind
    # Body fields that name the model, first non-empty wins (reference 2.1: ollama-js sends `name`).
    model_fields: tuple[str, ...] = ()
    streams_by_default: bool = False
    path_param: str = ""
    # Answered from the model's files: Ollama loads nothing and takes no slot for it.
    metadata: bool = False


_MODEL = ("model", "name")

EXACT: dict[str, tuple[frozenset[str], Route]] = {
    "/": (frozenset({"GET", "HEAD"}), Route(Kind.ROOT)),
    "/api/version": (frozenset({"GET", "HEAD"}), Route(Kind.VERSION)),
    "/api/tags": (frozenset({"GET", "HEAD"}), Route(Kind.TAGS)),
    "/api/ps": (frozenset({"GET"}), Route(Kind.PS)),
    "/v1/models": (frozenset({"GET"}), Route(Kind.V1_MODELS)),
    "/api/generate": (frozenset({"POST"}), Route(Kind.MODEL, ("model",), True)),
    "/api/chat": (frozenset({"POST"}), Route(Kind.MODEL, ("model",), True)),
    "/api/embed": (frozenset({"POST"}), Route(Kind.MODEL, ("model",))),
    "/api/embeddings": (frozenset({"POST"}), Route(Kind.MODEL, ("model",))),
    "/api/show": (frozenset({"POST"}), Route(Kind.MODEL, _MODEL, metadata=True)),
    "/v1/chat/completions": (frozenset({"POST"}), Route(Kind.MODEL, ("model",))),
    "/v1/completions": (frozenset({"POST"}), Route(Kind.MODEL, ("model",))),
    "/v1/embeddings": (frozenset({"POST"}), Route(Kind.MODEL, ("model",))),
    "/v1/responses": (frozenset({"POST"}), Route(Kind.MODEL, ("model",))),
    "/v1/messages": (frozenset({"POST"}), Route(Kind.MODEL, ("model",))),
    "/v1/audio/transcriptions": (frozenset({"POST"}), Route(Kind.MODEL, ("model",))),
    "/api/pull": (frozenset({"POST"}), Route(Kind.PULL, _MODEL, True)),
    "/api/push": (frozenset({"POST"}), Route(Kind.PUSH, _MODEL, True)),
    "/api/delete": (frozenset({"DELETE"}), Route(Kind.DELETE, _MODEL)),
    "/api/copy": (frozenset({"POST"}), Route(Kind.COPY, ("source",))),
    "/api/create": (frozenset({"POST"}), Route(Kind.CREATE, _MODEL, True)),
}

# One path segment after the prefix, like gin's `:param`.
PREFIXED: dict[str, tuple[frozenset[str], Route]] = {
    "/v1/models/": (
        frozenset({"GET"}),
        Route(Kind.MODEL_PATH, path_param="model", metadata=True),
    ),
    "/api/blobs/": (frozenset({"HEAD", "POST"}), Route(Kind.BLOB, path_param="digest")),
}

FORWARD_AS_IS = Route(Kind.ANY)

# Answered by the proxy for the whole fleet, unless X-Sollol-Node pins them to one node.
FLEET_VIEWS = frozenset({Kind.VERSION, Kind.TAGS, Kind.PS, Kind.V1_MODELS})
# gin keeps one route tree per method, made in the order GenerateRoutes first uses each method
# (`r.HEAD("/")` first), and lists a 405's `Allow` in that order.
_TREE_ORDER = ("HEAD", "GET", "POST", "DELETE")
# Ollama routes the proxy otherwise forwards as they are: known here only for their `Allow`
# and their trailing-slash redirect (reference section 2).
_OTHER_ROUTES = {
    "/api/status": frozenset({"GET"}),
    "/api/me": frozenset({"POST"}),
    "/api/signout": frozenset({"POST"}),
    "/api/experimental/web_search": frozenset({"POST"}),
    "/api/experimental/web_fetch": frozenset({"POST"}),
    "/api/experimental/model-recommendations": frozenset({"GET"}),
}
_OTHER_PREFIXED = {"/api/user/keys/": frozenset({"DELETE"})}


def _methods_at(path: str) -> frozenset[str] | None:
    """The methods Ollama serves on `path`, or None when no route matches it."""
    methods = EXACT[path][0] if path in EXACT else _OTHER_ROUTES.get(path)
    if methods is not None:
        return methods
    for prefix, prefixed in (*((p, m) for p, (m, _) in PREFIXED.items()), *_OTHER_PREFIXED.items()):
        param = path[len(prefix) :] if path.startswith(prefix) else ""
        if param and "/" not in param:
            return prefixed
    return None


def gin_allow(method: str, path: str) -> str | None:
    """gin's `Allow` for `method` on `path`: the path's methods when Ollama has the path but not
    that method (None otherwise). gin sets it before any middleware runs, so the Host check's
    and CORS's 403, and CORS's 204 to a preflight, carry it as the 405 does (reference 1.7)."""
    methods = _methods_at(path)
    if methods is None or method in methods:
        return None
    return ", ".join(m for m in _TREE_ORDER if m in methods)


def go_clean(path: str) -> str:
    """Go's path.Clean as net/http's ServeMux applies it to a request's path: `.` and empty
    segments dropped, `..` resolved, a trailing slash kept."""
    stack: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if stack:
                stack.pop()
        elif part not in ("", "."):
            stack.append(part)
    clean = "/" + "/".join(stack)
    return clean + "/" if path.endswith("/") and clean != "/" else clean


def redirected_first(method: str, raw_path: str) -> bool:
    """Whether Ollama answers this request with a redirect before its CORS and Host checks run:
    net/http's ServeMux sends an unclean path (`//api/chat`, `/api/../api/chat`) to its clean
    form, and gin a path with a slash too many or too few to the route that exists for the
    method (reference 1.7). The proxy then forwards it for the node's own redirect."""
    path = raw_path.split("?", 1)[0]
    if go_clean(path) != path:
        return True
    methods = _methods_at(path)
    if methods is not None and method in methods:
        return False
    other = path[:-1] if len(path) > 1 and path.endswith("/") else path + "/"
    others = _methods_at(other)
    return others is not None and method in others


SOLLOL_PREFIX = "/sollol/"
# The proxy's own pages outside /sollol/ (canonical prefix): the seed's paths, kept as aliases,
# the seed's batch embedding API, and the usual Prometheus and dashboard paths. Ollama has none
# of them (reference section 2).
PROXY_OWNED = frozenset(
    {
        "/metrics",
        "/dashboard",
        "/api/health",
        "/api/stats",
        "/api/dashboard",
        "/api/embed/batch",
        "/api/batch-status",
    }
)


def proxy_owned(path: str) -> bool:
    return path.startswith(SOLLOL_PREFIX) or path in PROXY_OWNED


def endpoint_label(path: str) -> str:
    """A bounded label for metrics and logs: the route template, or "other" (no raw paths)."""
    if path in EXACT or proxy_owned(path):
        return path if path in EXACT else "/sollol/"
    for prefix, (_, route) in PREFIXED.items():
        if path.startswith(prefix):
            return f"{prefix}:{route.path_param}"
    return "other"


def routed_path(path: str, raw_path: str) -> str:
    """The path to classify. aiohttp resolves `..` and `//` in `path`; Ollama redirects those,
    so an unclean path is classified raw and goes to a node untouched."""
    raw = raw_path.split("?", 1)[0]
    return path if raw == path else raw


def classify(method: str, path: str) -> tuple[Route, str]:
    """The route for this request and its path parameter ('' when there is none)."""
    if proxy_owned(path):
        return Route(Kind.SOLLOL), ""
    entry = EXACT.get(path)
    if entry is not None:
        methods, route = entry
        return (route, "") if method in methods else (FORWARD_AS_IS, "")
    for prefix, (methods, route) in PREFIXED.items():
        if path.startswith(prefix):
            param = path[len(prefix) :]
            if param and "/" not in param and method in methods:
                return route, param
            return FORWARD_AS_IS, ""
    return FORWARD_AS_IS, ""
