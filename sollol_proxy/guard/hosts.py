"""The Host check: Ollama's guard against DNS rebinding (reference 1.5), on every answer.

A web page on another site can make a browser send requests to a name that resolves to this
machine; the browser then sends that site's name as `Host`. Ollama, when it listens on loopback,
answers `403` (empty body) to any Host that is not an IP of its own kind or a local name. The
proxy rewrites `Host` for the nodes, so the nodes can no longer check it: the proxy does, with
Ollama's rule, when it listens on loopback, and whenever `listen.allowed_hosts` names hosts
(which are then accepted besides Ollama's own list: `app.example.com`, or `*.example.com` for its
subdomains). On another address without `allowed_hosts`, every Host is accepted, as in Ollama.
Like Ollama, an `OPTIONS` request to an allowed host name (not an IP) is answered `204` at once,
unless it is a CORS preflight: Ollama's CORS answers those before its Host check.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from sollol_proxy.config import Config
from sollol_proxy.lifecycle.cors import PREFLIGHT
from sollol_proxy.wire.routes import gin_allow, redirected_first

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Go's netip.Addr.IsPrivate: RFC 1918 and RFC 4193.
_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
# Every request is checked, and its Host is nearly always one of a few: the verdicts are
# remembered, for at most MEMO_SIZE values of at most MEMO_LENGTH characters (a hostile client
# can send any number of them: the memo then starts again when full, and a longer value is
# checked each time).
MEMO_SIZE = 256
MEMO_LENGTH = 256


def _bare_host(value: str) -> str:
    """The Host header without its port (Go's net.SplitHostPort, falling back to the value)."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def _local_addresses() -> frozenset[str]:
    """The addresses this machine's name resolves to (Ollama asks its network interfaces)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return frozenset()
    return frozenset(str(info[4][0]) for info in infos)


def listens_on_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostCheck:
    def __init__(self, config: Config) -> None:
        self._hostname = socket.gethostname().lower()
        self._local = _local_addresses()
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self._allowed = config.allowed_hosts
        self.active = listens_on_loopback(config.host) or bool(config.allowed_hosts)
        self.verdicts: dict[str, bool] = {}  # Host header -> allowed, under these settings

    def allowed(self, host_header: str) -> bool:
        verdict = self.verdicts.get(host_header)
        if verdict is None:
            verdict = self._check(host_header)
            if len(host_header) <= MEMO_LENGTH:
                if len(self.verdicts) >= MEMO_SIZE:
                    self.verdicts.clear()
                self.verdicts[host_header] = verdict
        return verdict

    def _check(self, host_header: str) -> bool:
        host = _bare_host(host_header).lower()
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None:
            return (
                address.is_loopback
                or address.is_unspecified
                or any(address in net for net in _PRIVATE if net.version == address.version)
                or host in self._local
                or host in self._allowed
            )
        if host in ("", "localhost", self._hostname) or host.endswith(_LOCAL_SUFFIXES):
            return True
        return any(
            host == entry or (entry.startswith("*.") and host.endswith(entry[1:]))
            for entry in self._allowed
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.active or request.get(PREFLIGHT):
            return await handler(request)  # a preflight: CORS answers it first, as in Ollama
        host = request.headers.get("Host", "")
        allowed = self.allowed(host)
        if allowed and request.method != "OPTIONS":
            return await handler(request)  # the usual request: nothing else to look at
        if redirected_first(request.method, request.raw_path):
            return await handler(request)  # the node's redirect comes before its Host check
        if not allowed:
            return _answer(403, request)  # Ollama's: no body
        if not _is_ip(_bare_host(host)):
            return _answer(204, request)  # as Ollama answers OPTIONS for an allowed name
        return await handler(request)


def _answer(status: int, request: web.Request) -> web.Response:
    """The Host check's bodiless answer, with the `Allow` gin set before the check ran."""
    response = web.Response(status=status)
    allow = gin_allow(request.method, request.path)
    if allow is not None:
        response.headers["Allow"] = allow
    return response


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
