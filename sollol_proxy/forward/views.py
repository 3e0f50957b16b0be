"""Answers for the whole fleet, in Ollama's own schema, order and byte style (reference 3.1-3.4, 3.17)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web

import sollol_proxy.wire.gojson as gojson
from sollol_proxy.fleet.fleet import NodeState
from sollol_proxy.wire.errors import JSON_CHARSET, JSON_PLAIN
from sollol_proxy.wire.gojson import timestamp_ns
from sollol_proxy.wire.names import normalize_model

ROOT_TEXT = b"Ollama is running"
# What a development build of Ollama reports, used when no node has ever answered.
UNKNOWN_VERSION = "0.0.0"


def _response(body: bytes, content_type: str) -> web.Response:
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def root() -> web.Response:
    return _response(ROOT_TEXT, "text/plain; charset=utf-8")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("-", 1)[0])[:3])


def version(nodes: Iterable[NodeState]) -> web.Response:
    """The oldest version among healthy nodes: clients gate features on it, so promise no more
    than every node can do."""
    nodes = list(nodes)
    known = [n.version for n in nodes if n.healthy and n.version] or [
        n.version for n in nodes if n.version
    ]
    oldest = min(known, key=_version_key) if known else UNKNOWN_VERSION
    return _response(gojson.dumps({"version": oldest}), JSON_CHARSET)


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


def tag_items(nodes: Iterable[NodeState]) -> list[dict[str, Any]]:
    return _union((n.models for n in nodes if n.healthy), "modified_at")


def tags(nodes: Iterable[NodeState]) -> web.Response:
    return _response(gojson.dumps({"models": tag_items(nodes)}), JSON_CHARSET)


def ps(nodes: Iterable[NodeState]) -> web.Response:
    items = _union((n.loaded for n in nodes if n.healthy), "expires_at")
    return _response(gojson.dumps({"models": items}), JSON_CHARSET)


def _namespace(name: str) -> str:
    """model.ParseName(name).Namespace: `library` unless the name says otherwise."""
    parts = normalize_model(name).split(":", 1)[0].split("/")
    return parts[-2] if len(parts) >= 2 else "library"


def v1_models(nodes: Iterable[NodeState]) -> web.Response:
    data = [
        {
            "id": item.get("name", ""),
            "object": "model",
            "created": timestamp_ns(item.get("modified_at")) // 10**9,
            "owned_by": _namespace(str(item.get("name", ""))),
        }
        for item in tag_items(nodes)
    ]
    # Go encodes an empty slice that was never appended to as null (reference 3.17).
    return _response(gojson.dumps_line({"object": "list", "data": data or None}), JSON_PLAIN)
