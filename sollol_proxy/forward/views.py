"""Answers for the whole fleet, in Ollama's own schema, order and byte style (reference 3.1-3.4,
3.17), built from a live read of the nodes (inventory.py) and saying which nodes they come from."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web

import sollol_proxy.wire.gojson as gojson
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.forward.inventory import PS, TAGS, Gathered, LiveInventory
from sollol_proxy.wire.errors import JSON_CHARSET, JSON_PLAIN
from sollol_proxy.wire.gojson import timestamp_ns
from sollol_proxy.wire.headers import NODE_HEADER, ROUTE_HEADER, STALE_HEADER
from sollol_proxy.wire.names import normalize_model
from sollol_proxy.wire.routes import Kind

ROOT_TEXT = b"Ollama is running"
# What a development build of Ollama reports, used when no node has ever answered.
UNKNOWN_VERSION = "0.0.0"


def _response(body: bytes, content_type: str) -> web.Response:
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def root() -> web.Response:
    response = _response(ROOT_TEXT, "text/plain; charset=utf-8")
    response.headers[ROUTE_HEADER] = "answered by the proxy"
    return response


def _version_key(version: str) -> tuple[tuple[int, ...], int, tuple[tuple[int, int, str], ...]]:
    """Semantic versions' order: a pre-release comes before its release ("0.33.0-rc2" before
    "0.33.0"), and its parts compare as numbers where they are numbers ("rc2" before "rc10")."""
    core, _, pre = version.partition("-")
    numbers = tuple(int(part) for part in re.findall(r"\d+", core)[:3])
    if not pre:
        return numbers, 1, ()
    parts = re.findall(r"\d+|[^\d.]+", pre)
    return numbers, 0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def version(nodes: Iterable[NodeState]) -> tuple[web.Response, list[str]]:
    """The oldest version among reachable nodes (else among those ever seen): clients gate
    features on it, so promise no more than every node can do. Also the nodes it compared."""
    nodes = list(nodes)
    known = [n for n in nodes if n.healthy and n.version] or [n for n in nodes if n.version]
    oldest = min((n.version or "" for n in known), key=_version_key, default=UNKNOWN_VERSION)
    return _response(gojson.dumps({"version": oldest}), JSON_CHARSET), [n.name for n in known]


def _union(per_node: Iterable[dict[str, dict[str, Any]]], time_field: str) -> list[dict[str, Any]]:
    """One item per model, the most recent one when nodes disagree; newest first, like Ollama."""
    merged: dict[str, dict[str, Any]] = {}
    for items in per_node:
        for key, item in items.items():
            current = merged.get(key)
            if current is None or timestamp_ns(item.get(time_field)) > timestamp_ns(
                current.get(time_field)
            ):
                merged[key] = item
    return sorted(
        merged.values(), key=lambda item: timestamp_ns(item.get(time_field)), reverse=True
    )


def tags(read: Gathered) -> web.Response:
    return _response(gojson.dumps({"models": _union(read.lists, "modified_at")}), JSON_CHARSET)


def ps(read: Gathered) -> web.Response:
    return _response(gojson.dumps({"models": _union(read.lists, "expires_at")}), JSON_CHARSET)


def _namespace(name: str) -> str:
    """model.ParseName(name).Namespace: `library` unless the name says otherwise."""
    parts = normalize_model(name).split(":", 1)[0].split("/")
    return parts[-2] if len(parts) >= 2 else "library"


def v1_models(read: Gathered) -> web.Response:
    data = [
        {
            "id": item.get("name", ""),
            "object": "model",
            "created": timestamp_ns(item.get("modified_at")) // 10**9,
            "owned_by": _namespace(str(item.get("name", ""))),
        }
        for item in _union(read.lists, "modified_at")
    ]
    # Go encodes an empty slice that was never appended to as null (reference 3.17).
    return _response(gojson.dumps_line({"object": "list", "data": data or None}), JSON_PLAIN)


def describe(read: Gathered) -> str:
    """X-Sollol-Route of a live view: who answered, and whose last known list stands in."""
    reachable = len(read.answered) + len(read.stale)
    if not reachable:
        return "fleet view: no reachable node"
    text = f"fleet view: {len(read.answered)} of {reachable} reachable nodes answered live"
    return text + "".join(f"; {name}: last known list ({why})" for name, why in read.stale)


class FleetViews:
    """The answers for the whole fleet, with headers saying which nodes they come from."""

    def __init__(self, fleet: Fleet, inventory: LiveInventory) -> None:
        self._fleet = fleet
        self._inventory = inventory

    async def answer(self, kind: Kind) -> web.Response:
        if kind is Kind.VERSION:
            response, nodes = version(self._fleet.nodes.values())
            route = f"fleet view: the oldest version of {len(nodes)} nodes" if nodes else ""
            return _headed(response, nodes, route or "fleet view: no node has answered yet")
        read = await self._inventory.read(PS if kind is Kind.PS else TAGS)
        render = {Kind.TAGS: tags, Kind.PS: ps, Kind.V1_MODELS: v1_models}[kind]
        response = _headed(render(read), list(read.answered), describe(read))
        if read.stale:
            response.headers[STALE_HEADER] = ",".join(name for name, _ in read.stale)
        return response


def _headed(response: web.Response, nodes: list[str], route: str) -> web.Response:
    if nodes:
        response.headers[NODE_HEADER] = ",".join(nodes)
    response.headers[ROUTE_HEADER] = route
    return response
