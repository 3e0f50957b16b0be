"""Which headers cross the proxy, in each direction, and why."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Protocol
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy


class Upstream(Protocol):
    """What the header rules need of a node (its configuration satisfies it)."""

    @property
    def url(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


# RFC 9110 section 7.6.1: connection-specific fields describe one hop and must not be forwarded.
HOP_BY_HOP: dict[str, str] = {
    "connection": "names the hop-by-hop fields of this connection only",
    "keep-alive": "persistence of this connection only",
    "proxy-connection": "non-standard twin of Connection sent by old clients",
    "proxy-authenticate": "challenges the client for this proxy hop",
    "proxy-authorization": "credentials for this proxy hop",
    "te": "transfer codings this hop accepts",
    "trailer": "trailers of this hop's chunked framing",
    "transfer-encoding": "framing is redone by each hop",
    "upgrade": "protocol switch of this connection",
}

# Framing and the routing host are recomputed for the upstream request.
REQUEST_RECOMPUTED: dict[str, str] = {
    "host": "the node may only accept its own address (Ollama's DNS-rebinding guard, reference 1.5)",
    "content-length": "set again from the forwarded body",
    "expect": "the proxy answers 100-continue itself, before it reads the body it forwards",
}

# aiohttp's server frames the response it writes; the proxy copies the node's length onto it.
RESPONSE_RECOMPUTED: dict[str, str] = {
    "content-length": "set again by the proxy's writer from the same byte count",
}

# Control headers a client sends to the proxy. They are stripped before forwarding: Ollama copies
# request headers to ollama.com for cloud models, and they mean nothing to a node.
NODE_HEADER = "X-Sollol-Node"  # request: pin a node (or `all`); response: the node(s) that answered
ROUTE_HEADER = "X-Sollol-Route"  # response: strategy and reason
REQUEST_ID_HEADER = "X-Sollol-Request-Id"  # response: the id that names this request in the logs
QUEUE_HEADER = "X-Sollol-Queue-Ms"  # response: how long the request waited for a free slot
STALE_HEADER = "X-Sollol-Stale"  # response: nodes whose last known list stands in a fleet view
SOLLOL_PREFIX = "x-sollol-"


def _connection_tokens(headers: Mapping[str, str] | CIMultiDictProxy[str]) -> set[str]:
    tokens: set[str] = set()
    getall = getattr(headers, "getall", None)
    values: Iterable[str] = getall("Connection", []) if getall else [headers.get("Connection", "")]
    for value in values:
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def upstream_request_headers(
    incoming: CIMultiDictProxy[str], node: Upstream, client_ip: str | None
) -> CIMultiDict[str]:
    """The client's headers as the node should see them."""
    dropped = _connection_tokens(incoming)
    if same_origin(incoming):
        # A page calling its own address sends an Origin that Ollama ignores (reference 1.6).
        # Under the node's address it would look cross-origin and could be refused: without
        # it the node, like Ollama at the proxy's address, sees no CORS request.
        dropped.add("origin")
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if (
            lower in HOP_BY_HOP
            or lower in REQUEST_RECOMPUTED
            or lower in dropped
            or lower.startswith(SOLLOL_PREFIX)
        ):
            continue
        out.add(name, value)
    out["Host"] = urlsplit(node.url).netloc
    if client_ip:
        previous = incoming.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{previous}, {client_ip}" if previous else client_ip
    for name, value in node.headers.items():
        out[name] = value
    return out


def same_origin(incoming: Mapping[str, str] | CIMultiDictProxy[str]) -> bool:
    """gin-contrib/cors: an Origin of `http://` or `https://` plus the Host is no CORS request."""
    origin, host = incoming.get("Origin"), incoming.get("Host", "")
    return origin is not None and origin in (f"http://{host}", f"https://{host}")


def upstream_probe_headers(node: Upstream) -> dict[str, str]:
    """Headers for the proxy's own health and inventory calls."""
    return {"Host": urlsplit(node.url).netloc, "User-Agent": "sollol-proxy", **node.headers}


def downstream_response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The node's response headers as the client should see them."""
    dropped = _connection_tokens(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in RESPONSE_RECOMPUTED or lower in dropped:
            continue
        out.add(name, value)
    return out


def new_request_id() -> str:
    """The value of `REQUEST_ID_HEADER` for a new request."""
    return secrets.token_hex(8)
