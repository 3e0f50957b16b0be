"""How fast each node really is, learned from the timing fields Ollama returns (reference 5.6).

The final object of every /api/chat and /api/generate answer carries `load_duration`,
`prompt_eval_count`, `prompt_eval_duration`, `eval_count`, `eval_duration` and `total_duration`
(nanoseconds). They are read from the last bytes of the response as it passes (the client's bytes
are untouched) and folded into decayed averages per node and model. Until a node has samples for
a model, what other nodes measured for it stands in, then the node's other models, and the
configured priors only for a fleet that has measured nothing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from sollol_proxy.config.policies import Priors
from sollol_proxy.wire.timings import LOAD_THRESHOLD_S, Timings

# Weight of a new sample in the moving averages: recent behaviour dominates within ~5 samples.
ALPHA = 0.3
# Prefill speed samples kept per node and model; the speed is their lower median.
PREFILL_WINDOW = 9


class Average:
    """An exponentially decayed average that starts empty."""

    __slots__ = ("samples", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.samples = 0

    def add(self, sample: float) -> None:
        self.value = sample if self.samples == 0 else self.value + ALPHA * (sample - self.value)
        self.samples += 1

    def get(self, default: float) -> float:
        return self.value if self.samples else default


class LowerMedian:
    """The lower median of the last `PREFILL_WINDOW` samples, for the prefill speed. Its samples
    err one way only: a prompt the node had cached after all looks many times faster (its
    prompt_eval_duration covers the uncached part), never slower. A decayed average that took
    such a sample as its first value kept most of the error for ten samples; a median drops it
    at the second. Same interface as `Average`."""

    __slots__ = ("_window", "samples", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.samples = 0
        self._window: deque[float] = deque(maxlen=PREFILL_WINDOW)

    def add(self, sample: float) -> None:
        self._window.append(sample)
        self.samples += 1
        ordered = sorted(self._window)
        self.value = ordered[(len(ordered) - 1) // 2]

    def get(self, default: float) -> float:
        return self.value if self.samples else default


@dataclass
class PairStats:
    """One model on one node."""

    prefill_tps: LowerMedian = field(default_factory=LowerMedian)
    decode_tps: Average = field(default_factory=Average)
    load_s: Average = field(default_factory=Average)
    ttft_s: Average = field(default_factory=Average)
    service_s: Average = field(default_factory=Average)


@dataclass
class NodeStats:
    """What a node's models have in common: the GPU's speed, and its reliability."""

    prefill_tps: LowerMedian = field(default_factory=LowerMedian)
    decode_tps: Average = field(default_factory=Average)
    success: Average = field(default_factory=Average)


class Learner:
    def __init__(self, priors: Priors, node_priors: dict[str, Priors] | None = None) -> None:
        self._priors = priors
        self._node_priors = node_priors or {}
        self._pairs: dict[tuple[str, str], PairStats] = {}
        self._nodes: dict[str, NodeStats] = {}
        self._outputs: dict[tuple[str, str], Average] = {}
        self._model_load: dict[str, Average] = {}  # load time of a model on any node
        # (model, "prefill_tps" | "decode_tps") -> that speed of the model on any node
        self._model_speeds: dict[tuple[str, str], Average | LowerMedian] = {}
        self._token_ratio: dict[str, Average] = {}  # Ollama's prompt tokens / the estimate
        self._arrivals: dict[str, tuple[float, Average]] = {}  # model -> (last request, interval)
        self._adopted: set[tuple[str, str, str]] = set()  # (node, model, speed) from other replicas
        # node -> observations of it so far: what was learned of it changed (fleet/views.py)
        self._versions: dict[str, int] = {}

    def reconfigure(self, priors: Priors, node_priors: dict[str, Priors]) -> None:
        """Reloaded priors: what is already learned stays, the new priors stand in for the rest."""
        self._priors = priors
        self._node_priors = node_priors

    def _pair(self, node: str, model: str) -> PairStats:
        stats = self._pairs.get((node, model))
        if stats is None:
            stats = self._pairs[(node, model)] = PairStats()
        return stats

    def _node(self, node: str) -> NodeStats:
        stats = self._nodes.get(node)
        if stats is None:
            stats = self._nodes[node] = NodeStats()
        return stats

    def version(self, node: str) -> int:
        return self._versions.get(node, 0)

    @property
    def versions(self) -> Mapping[str, int]:
        """Node -> `version(node)` for the nodes learned from (read-only): `.get(name, 0)` on
        it is one C call per candidate where `version` is a Python one."""
        return self._versions

    def priors(self, node: str) -> Priors:
        return self._node_priors.get(node, self._priors)

    # -- estimates (they run for every candidate of every request: fallbacks only when needed) --

    def prefill_tps(self, node: str, model: str) -> float:
        pair = self._pairs.get((node, model))
        if pair is not None and pair.prefill_tps.samples:
            return pair.prefill_tps.value
        return self._unmeasured(node, model, "prefill_tps", self.priors(node).prefill_tokens_per_s)

    def measured_prefill_tps(self, node: str, model: str) -> float | None:
        """The prefill speed measured for this model here, else for the node's other models;
        None before any measurement (the priors are no yardstick for judging a cache hit)."""
        pair = self._pairs.get((node, model))
        if pair is not None and pair.prefill_tps.samples:
            return pair.prefill_tps.value
        stats = self._nodes.get(node)
        return stats.prefill_tps.value if stats and stats.prefill_tps.samples else None

    def decode_tps(self, node: str, model: str) -> float:
        pair = self._pairs.get((node, model))
        if pair is not None and pair.decode_tps.samples:
            return pair.decode_tps.value
        return self._unmeasured(node, model, "decode_tps", self.priors(node).decode_tokens_per_s)

    def _unmeasured(self, node: str, model: str, speed: str, prior: float) -> float:
        """A node not measured for `model` is as fast as its peers measured it (unmeasured is
        not faster), else as its own other models, else the priors. A node given `priors` of
        its own is told to differ from its peers: its own models, then those priors."""
        peers = self._model_speeds.get((model, speed))
        if peers is not None and node not in self._node_priors:
            return peers.value
        own: Average = getattr(self._node(node), speed)
        return own.get(prior)

    def load_s(self, node: str, model: str, size_bytes: int) -> float:
        """Learned on this node; else as long as it took on other nodes; else the prior."""
        pair = self._pairs.get((node, model))
        if pair is not None and pair.load_s.samples:
            return pair.load_s.value
        elsewhere = self._model_load.get(model)
        if elsewhere is not None and elsewhere.samples:
            return elsewhere.value
        priors = self.priors(node)
        return priors.load_seconds + size_bytes / priors.load_bytes_per_s

    def observe_request(self, model: str, now: float | None = None) -> None:
        """A request for `model` arrived: its popularity prices what evicting it would cost."""
        now = time.monotonic() if now is None else now
        last, interval = self._arrivals.get(model, (None, Average()))
        if last is not None:
            interval.add(now - last)
        self._arrivals[model] = (now, interval)

    def demand_map(self, now: float | None = None) -> dict[str, float]:
        """Model -> its request rate relative to the most requested model's, 0..1."""
        now = time.monotonic() if now is None else now
        rates = {
            model: 1.0 / max(interval.value, now - last, 1e-3)
            for model, (last, interval) in self._arrivals.items()
            if interval.samples
        }
        top = max(rates.values(), default=0.0)
        return {model: rate / top for model, rate in rates.items()} if top else {}

    def token_ratio(self, model: str) -> float:
        """Ollama's count of prompt tokens per estimated token, for this model's tokenizer."""
        ratio = self._token_ratio.get(model)
        return ratio.get(1.0) if ratio else 1.0

    def ttft_s(self, node: str, model: str) -> float | None:
        stats = self._pairs.get((node, model))
        return stats.ttft_s.value if stats and stats.ttft_s.samples else None

    def service_s(self, node: str, model: str, prompt_tokens: int = 512) -> float:
        """How long one request of this model typically holds a slot on this node."""
        pair = self._pairs.get((node, model))
        if pair is not None and pair.service_s.samples:
            return pair.service_s.value
        return prompt_tokens / self.prefill_tps(
            node, model
        ) + self._priors.output_tokens / self.decode_tps(node, model)

    def success(self, node: str) -> float:
        return self._node(node).success.get(1.0)

    def expected_output(self, model: str, task: str, max_output: int | None) -> float:
        if max_output == 0:  # an embedding: nothing is generated
            return 0.0
        learned = self._outputs.get((model, task))
        typical = learned.get(self._priors.output_tokens) if learned else self._priors.output_tokens
        return min(typical, max_output) if max_output else typical

    # -- observations ----------------------------------------------------------------------------

    def observe_success(
        self,
        node: str,
        model: str,
        task: str,
        timings: Timings | None,
        *,
        clean_load: bool,
        cached_tokens: int,
        ttft_s: float | None,
        elapsed_s: float,
        estimated_prompt_tokens: int = 0,
    ) -> None:
        pair, stats = self._pair(node, model), self._node(node)
        self._versions[node] = self._versions.get(node, 0) + 1
        stats.success.add(1.0)
        if ttft_s is not None:
            pair.ttft_s.add(ttft_s)
        if timings is None:
            pair.service_s.add(elapsed_s)
            return
        # A slot is held for the prompt evaluation and the generation, not for the load.
        pair.service_s.add(timings.prompt_s + timings.output_s if timings.output_s else elapsed_s)
        if clean_load and timings.load_s >= LOAD_THRESHOLD_S:
            pair.load_s.add(timings.load_s)
            self._model_load.setdefault(model, Average()).add(timings.load_s)
        if estimated_prompt_tokens > 0 and timings.prompt_tokens > 0:
            ratio = timings.prompt_tokens / estimated_prompt_tokens
            self._token_ratio.setdefault(model, Average()).add(min(max(ratio, 0.25), 4.0))
        if task == "embedding":
            # /api/embed reports no prompt_eval_duration: after the load, the time is the
            # embedding of its tokens. That speed is this model's, not the node's in general.
            embed_s = timings.total_s - timings.load_s
            if timings.prompt_tokens > 0 and embed_s > 0:
                pair.prefill_tps.add(timings.prompt_tokens / embed_s)
            return
        # Only a prompt the proxy expected to be evaluated in full gives a clean prefill speed
        # (reference 5.6: prompt_eval_duration covers the uncached part only). A much faster
        # sample means the node had it cached after all, and is not a speed.
        if cached_tokens == 0 and timings.prompt_tokens >= 32 and timings.prompt_s > 0:
            speed = timings.prompt_tokens / timings.prompt_s
            current = pair.prefill_tps
            if current.samples < 3 or speed < 3 * current.value:
                current.add(speed)
                stats.prefill_tps.add(speed)
                self._model_speeds.setdefault((model, "prefill_tps"), LowerMedian()).add(speed)
        if timings.output_tokens >= 4 and timings.output_s > 0:
            speed = timings.output_tokens / timings.output_s
            pair.decode_tps.add(speed)
            stats.decode_tps.add(speed)
            self._model_speeds.setdefault((model, "decode_tps"), Average()).add(speed)
        if timings.output_tokens and not timings.hit_limit:  # a cut answer says little of length
            self._outputs.setdefault((model, task), Average()).add(timings.output_tokens)

    def measured(self) -> dict[tuple[str, str], dict[str, float]]:
        """What this replica measured itself, per (node, model): PairStats field -> value (for
        replicas sharing what they learn: shared/learning.py)."""
        out: dict[tuple[str, str], dict[str, float]] = {}
        for (node, model), pair in self._pairs.items():
            values = {
                f.name: average.value
                for f in fields(pair)
                if (average := getattr(pair, f.name)).samples
                > ((node, model, f.name) in self._adopted)
            }
            if values:
                out[(node, model)] = values
        return out

    def adopt(self, node: str, model: str, name: str, value: float) -> bool:
        """Another replica measured this: taken as one sample while this one has measured
        nothing of it (a fresh replica routes as the fleet learned; its own samples follow).
        True when taken."""
        average = getattr(self._pair(node, model), name, None)
        if not isinstance(average, Average | LowerMedian) or average.samples or value <= 0:
            return False
        average.add(value)
        self._adopted.add((node, model, name))
        self._versions[node] = self._versions.get(node, 0) + 1  # its views are made again
        return True

    def observe_failure(self, node: str) -> None:
        self._versions[node] = self._versions.get(node, 0) + 1
        self._node(node).success.add(0.0)

    def snapshot(self, node: str) -> dict[str, object]:
        """What has been learned about a node, for /sollol/nodes."""
        stats = self._node(node)
        return {
            "success_rate": round(self.success(node), 3),
            "decode_tokens_per_s": round(
                stats.decode_tps.get(self.priors(node).decode_tokens_per_s), 1
            ),
            "prefill_tokens_per_s": round(
                stats.prefill_tps.get(self.priors(node).prefill_tokens_per_s), 1
            ),
            "models": {
                model: {
                    "decode_tokens_per_s": round(pair.decode_tps.value, 1),
                    "prefill_tokens_per_s": round(pair.prefill_tps.value, 1),
                    "load_s": round(pair.load_s.value, 3),
                    "ttft_s": round(pair.ttft_s.value, 3),
                    "service_s": round(pair.service_s.value, 3),
                    "samples": pair.service_s.samples,
                }
                for (name, model), pair in self._pairs.items()
                if name == node and pair.service_s.samples
            },
        }
