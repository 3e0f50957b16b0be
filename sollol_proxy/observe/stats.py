"""Per node and model counters for GET /sollol/stats, fed by finished requests.

Prometheus keeps the long history; this is what a person (or the dashboard) asks the proxy
directly: counts, recent latency percentiles, tokens, cache-affinity hits, the prompt cache's
predicted against observed hit ratio, and which routing reasons each task type ends up with.
Keys are bounded like metric labels (labels.py).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

from sollol_proxy.fleet.accuracy import Accuracy
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.forward.record import Outcome, RequestRecord
from sollol_proxy.observe.labels import model_label
from sollol_proxy.routing import Reason

# Percentiles are over the most recent requests of each node and model.
RECENT = 256


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class PairCounts:
    requests: int = 0
    errors: int = 0  # status >= 400 from the node or the proxy
    midstream_failures: int = 0
    cache_affinity_hits: int = 0  # routed there because it held part of the prompt
    tokens_in: int = 0
    tokens_out: int = 0
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))
    ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))

    def to_json(self) -> dict[str, object]:
        durations, ttfts = list(self.durations), list(self.ttfts)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "midstream_failures": self.midstream_failures,
            "cache_affinity_hits": self.cache_affinity_hits,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_s": _summary(durations),
            "ttft_s": _summary(ttfts),
        }


def _summary(values: list[float]) -> dict[str, float | None]:
    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return {
        "mean": r(sum(values) / len(values)) if values else None,
        "p50": r(percentile(values, 0.5)),
        "p95": r(percentile(values, 0.95)),
    }


def _count(table: dict[str, Counter[str]], key: str, reason: str) -> None:
    counts = table.get(key)
    if counts is None:  # (setdefault would build a Counter for every request)
        counts = table[key] = Counter()
    counts[reason] += 1


class Stats:
    def __init__(self, fleet: Fleet, learner: Learner, prompt_cache: PromptCache) -> None:
        self._fleet = fleet
        self._learner = learner
        self._prompt_cache = prompt_cache
        self._started = time.time()
        self.total = 0
        self._pairs: dict[tuple[str, str], PairCounts] = {}
        self._tasks: dict[str, Counter[str]] = {}
        self._reasons: dict[str, Counter[str]] = {}

    def observe(self, record: RequestRecord) -> None:
        """The RequestRecord sink."""
        self.total += 1
        node = record.node  # management fan-outs ("a,b") are not one node's work
        model = model_label(self._fleet, record.model, node)
        if node in self._fleet.nodes and model:
            pair = self._pairs.get((node, model))
            if pair is None:
                pair = self._pairs[(node, model)] = PairCounts()
            pair.requests += 1
            pair.errors += record.status >= 400
            pair.midstream_failures += record.outcome is Outcome.MIDSTREAM_FAILURE
            pair.cache_affinity_hits += record.reason == Reason.CACHE_AFFINITY
            pair.tokens_in += record.tokens_in or 0
            pair.tokens_out += record.tokens_out or 0
            pair.durations.append(record.duration_s)
            if record.stream and record.status == 200 and record.ttft_s is not None:
                pair.ttfts.append(record.ttft_s)
        if record.reason:
            _count(self._reasons, record.strategy or "none", record.reason)
            if record.task:
                _count(self._tasks, record.task, record.reason)

    def node_requests(self, node: str) -> tuple[int, int]:
        """Requests and errors counted for a node, over all its models."""
        pairs = [p for (n, _), p in self._pairs.items() if n == node]
        return sum(p.requests for p in pairs), sum(p.errors for p in pairs)

    def node_latencies(self, node: str) -> list[float]:
        return [d for (n, _), p in self._pairs.items() if n == node for d in p.durations]

    def to_json(self) -> dict[str, object]:
        nodes: dict[str, dict[str, object]] = {}
        for name in self._fleet.nodes:
            learned = self._learner.snapshot(name)
            learned_models = learned.pop("models")
            assert isinstance(learned_models, dict)
            requests, errors = self.node_requests(name)
            models: dict[str, object] = {}
            for (node, model), pair in sorted(self._pairs.items()):
                if node == name:
                    models[model] = {**pair.to_json(), "learned": learned_models.get(model)}
            nodes[name] = {
                "requests": requests,
                "errors": errors,
                "learned": learned,
                "models": models,
            }
        return {
            "time": time.time(),
            "since": self._started,
            "requests": self.total,
            "nodes": nodes,
            "routing": {
                "by_strategy": {s: dict(c) for s, c in sorted(self._reasons.items())},
                "by_task": {t: dict(c) for t, c in sorted(self._tasks.items())},
            },
            "prompt_cache": self._prompt_cache_json(),
        }

    def _prompt_cache_json(self) -> dict[str, object]:
        """Predicted against observed prompt-cache hits, fleet-wide and per node and model."""
        total = Accuracy()
        by_node: dict[str, dict[str, Accuracy]] = {}
        for (node, model), score in sorted(self._prompt_cache.accuracy.items()):
            label = model_label(self._fleet, model)
            if node in self._fleet.nodes and label:
                total.add(score)
                by_node.setdefault(node, {}).setdefault(label, Accuracy()).add(score)
        return {
            **total.to_json(),
            "nodes": {
                node: {model: score.to_json() for model, score in models.items()}
                for node, models in by_node.items()
            },
            "warmups": self._prompt_cache.warmups.to_json(),
        }
