"""What GET /sollol/health and GET /sollol/dashboard return, and the alerts the dashboard shows.

The page (`static/dashboard.html`) renders exactly the /sollol/dashboard JSON and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sollol_proxy import __version__
from sollol_proxy.admission.admission import Admission
from sollol_proxy.fleet.capacity import model_slots, slot_source
from sollol_proxy.fleet.decisions import DecisionLog
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.health import State
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.observe.batches import Batches
from sollol_proxy.observe.stats import Stats, percentile

DECISIONS_SHOWN = 20
# A node whose recent success rate (learner, decayed) is below this raises an alert.
ERROR_RATE_ALERT = 0.2
# A node whose learned generation speed for a model is below this share of the fastest node's.
SLOW_RATIO = 0.5


def health(fleet: Fleet) -> tuple[int, dict[str, object]]:
    """The proxy answers 200 while at least one node is healthy, 503 otherwise (for probes)."""
    nodes = list(fleet.nodes.values())
    healthy = sum(n.healthy for n in nodes)
    status = "ok" if healthy == len(nodes) else "degraded" if healthy else "down"
    body = {
        "status": status,
        "version": __version__,
        "nodes_healthy": healthy,
        "nodes_total": len(nodes),
        "nodes": [
            {
                "name": n.name,
                "healthy": n.healthy,
                "state": n.health.current().value,
                "last_error": n.last_error or None,
                "version": n.version,
            }
            for n in nodes
        ],
    }
    return (200 if healthy else 503), body


class Dashboard:
    def __init__(
        self,
        fleet: Fleet,
        learner: Learner,
        decisions: DecisionLog,
        stats: Stats,
        admission: Admission,
        batches: Batches | None = None,
        more_alerts: Callable[[], list[dict[str, str]]] | None = None,
    ) -> None:
        self._batches = batches
        self._more_alerts = more_alerts  # the shared state's (Redis unreachable)
        self._admission = admission
        self._fleet = fleet
        self._learner = learner
        self._decisions = decisions
        self._stats = stats
        self._started = time.time()

    def to_json(self) -> dict[str, Any]:
        nodes = list(self._fleet.nodes.values())
        return {
            "time": time.time(),
            "proxy": {
                "version": __version__,
                "uptime_s": round(time.time() - self._started, 1),
                "requests": self._stats.total,
                "in_flight": sum(n.in_flight for n in nodes),
            },
            "nodes": [self._node(n) for n in nodes],
            "decisions": [_decision(d) for d in self._decisions.recent(DECISIONS_SHOWN)],
            "alerts": self.alerts(),
            "queue": self._queue(),
            "batches": self._batches.to_json() if self._batches is not None else [],
        }

    def _queue(self) -> dict[str, Any]:
        """The priority queue: how many wait, for how long, per priority (those with traffic)."""
        snapshot = self._admission.snapshot(limit=10)
        levels = {
            p: v
            for p, v in snapshot["by_priority"].items()
            if v["admitted"] or v["waiting"] or v["rejected"] or v["shed"] or v["timed_out"]
        }
        return {
            "enabled": snapshot["enabled"],
            "waiting": snapshot["depth"],
            "oldest_wait_s": max((v["oldest_wait_s"] for v in levels.values()), default=None),
            "by_priority": {p: v["waiting"] for p, v in levels.items()},
            "wait_p95_s": {p: v["wait_p95_s"] for p, v in levels.items()},
            "turned_away": sum(
                v["rejected"] + v["shed"] + v["timed_out"] for v in snapshot["by_priority"].values()
            ),
            "next": snapshot["waiting"],
        }

    def _node(self, node: NodeState) -> dict[str, Any]:
        learned = self._learner.snapshot(node.name)
        requests, errors = self._stats.node_requests(node.name)
        latencies = self._stats.node_latencies(node.name)
        return {
            "name": node.name,
            "url": node.config.url,
            "healthy": node.healthy,
            "state": node.health.current().value,  # up, down, ejected, busy, half_open
            "last_error": node.last_error or None,
            "version": node.version,
            "in_flight": node.in_flight,
            # what a model gets there (embedding models get one, below), and why it is believed
            "slots_per_model": node.beliefs.prior(""),
            "slots_source": "configured" if node.config.num_parallel is not None else "auto",
            "loaded": [
                {
                    "model": m,
                    "in_flight": node.model_in_flight.get(m, 0),
                    "slots": model_slots(node, m),
                    "slots_source": slot_source(node, m),
                }
                for m in sorted(node.loaded.keys() | node.recent.keys())
            ],
            "loading": sorted(node.loading),
            "models_available": len(node.models),
            "decode_tokens_per_s": learned["decode_tokens_per_s"],
            "prefill_tokens_per_s": learned["prefill_tokens_per_s"],
            "success_rate": learned["success_rate"],
            "requests": requests,
            "errors": errors,
            "latency_p50_s": _round(percentile(latencies, 0.5)),
            "latency_p95_s": _round(percentile(latencies, 0.95)),
        }

    def alerts(self) -> list[dict[str, str]]:
        alerts: list[dict[str, str]] = []
        for node in self._fleet.nodes.values():
            if not node.healthy:
                alerts.append(
                    _alert("critical", "down", node.name, f"{node.name} is down: {node.last_error}")
                )
                continue
            state = node.health.current()
            if state is not State.UP:
                severity = "critical" if state is State.EJECTED else "warning"
                why = node.health.reason
                alerts.append(
                    _alert(severity, state.value, node.name, f"{node.name} is {state}: {why}")
                )
            success = self._learner.success(node.name)
            if success < 1 - ERROR_RATE_ALERT:
                alerts.append(
                    _alert(
                        "warning",
                        "errors",
                        node.name,
                        f"{node.name}: recent success rate {success:.0%}",
                    )
                )
        alerts.extend(self._slow())
        if self._more_alerts is not None:
            alerts.extend(self._more_alerts())
        return alerts

    def _slow(self) -> list[dict[str, str]]:
        """Nodes generating a model at under half the speed of the fastest node for it."""
        speeds: dict[str, dict[str, float]] = {}
        # Reachable nodes, read without Fleet.healthy(): its panic mode would cut ejections short.
        for node in (n for n in self._fleet.nodes.values() if n.healthy):
            models = self._learner.snapshot(node.name)["models"]
            assert isinstance(models, dict)
            for model, values in models.items():
                if values["decode_tokens_per_s"] > 0:
                    speeds.setdefault(model, {})[node.name] = values["decode_tokens_per_s"]
        alerts = []
        for model, by_node in sorted(speeds.items()):
            fastest = max(by_node.values())
            for name, speed in sorted(by_node.items()):
                if speed < SLOW_RATIO * fastest:
                    alerts.append(
                        _alert(
                            "warning",
                            "slow",
                            name,
                            f"{name}: {model} at {speed:.0f} tokens/s, fastest node {fastest:.0f}",
                        )
                    )
        return alerts


def _alert(severity: str, kind: str, node: str, message: str) -> dict[str, str]:
    return {"severity": severity, "kind": kind, "node": node, "message": message}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _decision(decision: dict[str, Any]) -> dict[str, Any]:
    keys = ("request_id", "time", "model", "task", "priority", "strategy", "node", "served_by")
    return {
        **{k: decision.get(k) for k in keys},
        "category": decision.get("category"),
        "reason": decision.get("reason"),
        # Those priced exactly and the others (performance prices only the top of a large fleet).
        "candidates": len(decision.get("candidates", ())) + len(decision.get("others", ())),
    }
