"""How fast each node embeds, learned from the sub-batches it answered, and what it has done.

Ollama's embed answer has no prompt_eval_duration, so the speed is the documents of a
sub-batch over the time the node took to answer it (decayed average per node and model). It
sizes sub-batches (split.py); the counters feed /metrics and the dashboard.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Weight of a new sample: recent behaviour dominates within a few sub-batches.
ALPHA = 0.3


@dataclass
class EmbedSpeed:
    _rates: dict[tuple[str, str], float] = field(default_factory=dict)  # (node, model) -> docs/s
    done: Counter[str] = field(default_factory=Counter)  # documents embedded, per node
    failed: Counter[str] = field(default_factory=Counter)  # documents a node failed, per node

    def observe(self, node: str, model: str, docs: int, seconds: float) -> None:
        self.done[node] += docs
        if docs <= 0 or seconds <= 0:
            return
        sample = docs / seconds
        old = self._rates.get((node, model))
        self._rates[(node, model)] = sample if old is None else old + ALPHA * (sample - old)

    def rate(self, node: str, model: str) -> float:
        """Documents per second, 0.0 when not measured yet."""
        return self._rates.get((node, model), 0.0)

    def rates(self, nodes: list[str], model: str) -> dict[str, float]:
        return {n: self.rate(n, model) for n in nodes}

    def by_node(self) -> dict[str, float]:
        """The latest learned rate of each node (over its models), for /metrics."""
        best: dict[str, float] = {}
        for (node, _), rate in self._rates.items():
            best[node] = max(best.get(node, 0.0), rate)
        return best
