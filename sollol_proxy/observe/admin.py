"""The proxy's own endpoints: what it knows and why it routed as it did.

`/sollol/*` is the canonical prefix (Ollama has no such routes); `/api/health`, `/api/stats` and
`/api/dashboard` are the seed's paths, kept as aliases; `/metrics` and `/dashboard` are where
Prometheus and people look by habit. The JSON builders live in stats.py and dashboard.py.
"""

from __future__ import annotations

import time
from importlib import resources

from aiohttp import web

import sollol_proxy.fleet.capacity as capacity
import sollol_proxy.wire.gojson as gojson
from sollol_proxy.admission.admission import Admission
from sollol_proxy.config.model import AUTO
from sollol_proxy.fleet.decisions import DecisionLog
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.lifecycle.reload import LiveConfig
from sollol_proxy.observe.dashboard import Dashboard, health
from sollol_proxy.observe.history import HORIZON_S, History
from sollol_proxy.observe.metrics import CONTENT_TYPE, Metrics
from sollol_proxy.observe.stats import Stats
from sollol_proxy.wire.errors import JSON_PLAIN

DEFAULT_LIMIT = 50
DEFAULT_WINDOW_S = 900  # the dashboard's charts: the last 15 minutes
ALIASES = {
    "/api/health": "/sollol/health",
    "/api/stats": "/sollol/stats",
    "/api/dashboard": "/sollol/dashboard",
}


def _json(value: object, status: int = 200) -> web.Response:
    response = web.Response(status=status, body=gojson.dumps_line(value))
    response.headers["Content-Type"] = JSON_PLAIN
    return response


def not_found() -> web.Response:
    response = web.Response(status=404, body=b"404 page not found")
    response.headers["Content-Type"] = "text/plain"
    return response


class Admin:
    def __init__(
        self,
        fleet: Fleet,
        learner: Learner,
        decisions: DecisionLog,
        live: LiveConfig,
        admission: Admission,
        metrics: Metrics,
        stats: Stats,
        dashboard: Dashboard,
        history: History,
        prompt_cache: PromptCache,
    ) -> None:
        self._fleet = fleet
        self._prompt_cache = prompt_cache
        self._learner = learner
        self._decisions = decisions
        self._live = live
        self._admission = admission
        self._metrics = metrics
        self._stats = stats
        self._dashboard = dashboard
        self._history = history
        self._page = resources.files(__package__).joinpath("static/dashboard.html").read_bytes()

    def handle(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return not_found()
        path = ALIASES.get(request.path, request.path)
        if path == "/metrics":
            return self.metrics()
        if path == "/dashboard":
            response = web.Response(body=self._page)
            response.headers["Content-Type"] = "text/html; charset=utf-8"
            response.headers["Cache-Control"] = "no-cache"
            return response
        if path == "/sollol/health":
            status, body = health(self._fleet)
            return _json(body, status)
        if path == "/sollol/stats":
            # The queue per priority too: depth, waits, admissions and 503s (as /sollol/queue).
            queue = self._admission.snapshot(limit=0)["by_priority"]
            return _json({**self._stats.to_json(), "queue_by_priority": queue})
        if path == "/sollol/dashboard":
            return _json(self._dashboard.to_json())
        if path == "/sollol/timeseries":
            return self._timeseries(request)
        if path == "/sollol/decisions":
            try:
                limit = int(request.query.get("limit", DEFAULT_LIMIT))
            except ValueError:
                return _json({"error": "limit must be an integer"}, 400)
            return _json({"decisions": self._decisions.recent(limit)})
        if path == "/sollol/nodes":
            return _json(
                {
                    "time": time.time(),
                    "config": {
                        "generation": self._live.generation,
                        "loaded_at": self._live.loaded_at,
                    },
                    "nodes": [self._node(n) for n in self._fleet.nodes.values()],
                }
            )
        if request.path == "/sollol/queue":
            return _json({"time": time.time(), **self._admission.snapshot()})
        return not_found()

    def _timeseries(self, request: web.Request) -> web.Response:
        raw = request.query.get("window", str(DEFAULT_WINDOW_S))
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 5 and 0 < int(raw) <= HORIZON_S):
            return _json({"error": f"window must be whole seconds from 1 to {HORIZON_S:g}"}, 400)
        return _json(self._history.to_json(int(raw)))

    def metrics(self) -> web.Response:
        response = web.Response(body=self._metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    def _node(self, node: NodeState) -> dict[str, object]:
        in_use = self._admission.slots.in_use(node.name)
        return {
            "name": node.name,
            "url": node.config.url,
            "healthy": node.healthy,
            "last_error": node.last_error or None,
            "health": node.health.snapshot(),
            "version": node.version,
            "num_parallel": AUTO if node.config.num_parallel is None else node.config.num_parallel,
            "in_flight": node.in_flight,
            "in_flight_by_model": dict(node.model_in_flight),
            "slots_in_use": in_use,
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
            "vram": capacity.vram_bytes(node),
            "max_loaded_models": capacity.max_loaded(node),
            # slots per model: in use, believed, the admission limit, and where the belief comes from
            "capacity": capacity.snapshot(node, in_use),
            "labels": dict(node.config.labels),
            "learned": self._learner.snapshot(node.name),
            # per model, what the proxy believes each slot holds (see README, Routing)
            "cache_slots": self._prompt_cache.describe(node.name),
        }
