"""gin's routing rules as Ollama configures them (§1.5, §1.7).

aiohttp's own router would answer 404/405 with different bodies and never redirect, so
the node routes every request itself: ServeMux path cleaning, exact/param matches,
trailing-slash redirects, the Host check, then 405 (with Allow) or 404."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from functools import cache
from typing import TYPE_CHECKING

from aiohttp import web

import sollol_proxy.simulator.routes_infer as routes_infer
import sollol_proxy.simulator.routes_models as routes_models
import sollol_proxy.simulator.routes_openai as routes_openai
import sollol_proxy.simulator.routes_registry as routes_registry
from sollol_proxy.simulator.wire import respond

if TYPE_CHECKING:
    from sollol_proxy.simulator.core import NodeCore

Handler = Callable[["NodeCore", web.Request], Awaitable[web.StreamResponse]]

# Registration order of server/routes.go GenerateRoutes: gin keeps one tree per method in
# first-registration order, and builds the Allow header of a 405 in that order.
ROUTES: list[tuple[str, str, Handler]] = [
    ("HEAD", "/", routes_models.root),
    ("GET", "/", routes_models.root),
    ("HEAD", "/api/version", routes_models.version),
    ("GET", "/api/version", routes_models.version),
    ("GET", "/api/status", routes_models.status),
    ("POST", "/api/pull", routes_registry.pull),
    ("POST", "/api/push", routes_registry.push),
    ("HEAD", "/api/tags", routes_models.tags),
    ("GET", "/api/tags", routes_models.tags),
    ("POST", "/api/show", routes_models.show),
    ("DELETE", "/api/delete", routes_models.delete),
    ("POST", "/api/create", routes_registry.create),
    ("POST", "/api/blobs/:digest", routes_models.post_blob),
    ("HEAD", "/api/blobs/:digest", routes_models.head_blob),
    ("POST", "/api/copy", routes_models.copy),
    ("GET", "/api/ps", routes_models.ps),
    ("POST", "/api/generate", routes_infer.generate),
    ("POST", "/api/chat", routes_infer.chat),
    ("POST", "/api/embed", routes_infer.embed),
    ("POST", "/api/embeddings", routes_infer.embeddings),
    ("POST", "/v1/chat/completions", routes_openai.chat_completions),
    ("POST", "/v1/completions", routes_openai.completions),
    ("POST", "/v1/embeddings", routes_openai.embeddings),
    ("GET", "/v1/models", routes_openai.list_models),
    ("GET", "/v1/models/:model", routes_openai.retrieve_model),
]
METHOD_ORDER: tuple[str, ...] = tuple(dict.fromkeys(m for m, _, _ in ROUTES))


def _match(pattern: str, path: str) -> dict[str, str] | None:
    want, got = pattern.split("/"), path.split("/")
    if len(want) != len(got):
        return None
    params: dict[str, str] = {}
    for w, g in zip(want, got, strict=True):
        if w.startswith(":"):
            if not g:
                return None
            params[w[1:]] = g
        elif w != g:
            return None
    return params


def lookup(path: str) -> dict[str, tuple[Handler, dict[str, str]]]:
    """Every method that has a route for this path, in tree order."""
    found: dict[str, tuple[Handler, dict[str, str]]] = {}
    for method, pattern, handler in ROUTES:
        params = _match(pattern, path)
        if params is not None and method not in found:
            found[method] = (handler, params)
    return found


def _html_escape(s: str) -> str:
    for a, b in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;"), ("'", "&#39;")):
        s = s.replace(a, b)
    return s


def redirect(request: web.Request, path: str, code: int) -> web.Response:
    """net/http's http.Redirect: a short HTML body for GET only."""
    location = path + (f"?{request.query_string}" if request.query_string else "")
    ctype = "text/html; charset=utf-8" if request.method in ("GET", "HEAD") else None
    body = None
    if request.method == "GET":
        reason = "Moved Permanently" if code == 301 else "Temporary Redirect"
        body = f'<a href="{_html_escape(location)}">{reason}</a>.\n\n'.encode()
    return respond(code, body, ctype, {"Location": location})


def trailing_slash_target(path: str, method: str) -> str | None:
    alt = path[:-1] if len(path) > 1 and path.endswith("/") else path + "/"
    return alt if method in lookup(alt) else None


# ---------------------------------------------------------------- Host check (§1.5)

_GO_PRIVATE = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
]


@cache
def _local_ips() -> frozenset[str]:
    ips: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            ips.add(str(info[4][0]))
    except OSError:
        pass
    return frozenset(ips)


def _split_host(host: str) -> str:
    # net.SplitHostPort, falling back to the whole value when it fails.
    if host.startswith("["):
        end = host.find("]")
        if end > 0 and host[end + 1 :].startswith(":"):
            return host[1:end]
        return host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return addr == "localhost"


def host_check(host_header: str, bind_host: str) -> str | None:
    """'ip' or 'name' when the Host is allowed (a name host also gets OPTIONS answered 204),
    None when it must be refused with 403."""
    if not is_loopback(bind_host):
        return "ip"
    host = _split_host(host_header)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and (
        ip.is_loopback
        or ip.is_unspecified
        or str(ip) in _local_ips()
        or any(ip in net for net in _GO_PRIVATE)
    ):
        return "ip"
    name = host.lower()
    if name in ("", "localhost") or name == socket.gethostname().lower():
        return "name"
    if name.endswith((".localhost", ".local", ".internal")):
        return "name"
    return None
