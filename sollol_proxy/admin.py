"""The proxy's own endpoints under /sollol/: what it knows and why it routed as it did."""

from __future__ import annotations

import time

from aiohttp import web

from . import gojson
from .decisions import DecisionLog
from .errors import JSON_PLAIN
from .fleet import Fleet, NodeState
from .learning import Learner

DEFAULT_LIMIT = 50


def _json(value: object, status: int = 200) -> web.Response:
    response = web.Response(status=status, body=gojson.dumps_line(value))
    response.headers["Content-Type"] = JSON_PLAIN
    return response


def not_found() -> web.Response:
    response = web.Response(status=404, body=b"404 page not found")
    response.headers["Content-Type"] = "text/plain"
    return response


class Admin:
    def __init__(self, fleet: Fleet, learner: Learner, decisions: DecisionLog) -> None:
        self._fleet = fleet
        self._learner = learner
        self._decisions = decisions

    def handle(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return not_found()
        if request.path == "/sollol/decisions":
            try:
                limit = int(request.query.get("limit", DEFAULT_LIMIT))
            except ValueError:
                return _json({"error": "limit must be an integer"}, 400)
            return _json({"decisions": self._decisions.recent(limit)})
        if request.path == "/sollol/nodes":
            return _json(
                {"time": time.time(), "nodes": [self._node(n) for n in self._fleet.nodes.values()]}
            )
        return not_found()

    def _node(self, node: NodeState) -> dict[str, object]:
        return {
            "name": node.name,
            "url": node.config.url,
            "healthy": node.healthy,
            "last_error": node.last_error or None,
            "health": node.health.snapshot(),
            "version": node.version,
            "num_parallel": node.config.num_parallel,
            "in_flight": node.in_flight,
            "in_flight_by_model": dict(node.model_in_flight),
            "loading": dict(node.loading),
            "evicting": dict(node.evicting),
            "models": sorted(node.models),
            "loaded": sorted(node.loaded.keys() | node.recent.keys()),
            # as of the last /api/ps: what Ollama reports its loaded models use on the GPU
            "vram_in_use": sum(
                item.get("size_vram", 0)
                for item in node.loaded.values()
                if isinstance(item.get("size_vram"), int)
            ),
            "vram": node.config.vram_bytes,
            "max_loaded_models": node.config.max_loaded_models,
            "labels": dict(node.config.labels),
            "learned": self._learner.snapshot(node.name),
        }
