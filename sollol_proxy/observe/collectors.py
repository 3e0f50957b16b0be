"""Live gauges read from the fleet, the learner, the queue and the prompt cache at scrape time,
so nothing has to be updated on every change. Labels are bounded (see labels.py)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import sollol_proxy.fleet.capacity as capacity
from sollol_proxy.admission.admission import Admission
from sollol_proxy.fleet.accuracy import Accuracy
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.health import State
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.forward.retry import RetryBudget
from sollol_proxy.observe.labels import model_label, node_label


class FleetCollector(Collector):
    """Node state and learned rates, read from the live objects at scrape time."""

    def __init__(self, fleet: Fleet, learner: Learner) -> None:
        self._fleet = fleet
        self._learner = learner

    def collect(self) -> Iterator[Metric]:
        node_labels = ["node"]
        pair_labels = ["node", "model"]
        up = GaugeMetricFamily(
            "sollol_node_up", "1 when the node answers its probes.", labels=node_labels
        )
        in_flight = GaugeMetricFamily(
            "sollol_node_in_flight", "Requests the proxy has on the node.", labels=node_labels
        )
        slots = GaugeMetricFamily(
            "sollol_node_slots",
            "Parallel requests a model gets on the node (its OLLAMA_NUM_PARALLEL, configured or "
            "learned).",
            labels=node_labels,
        )
        believed = GaugeMetricFamily(
            "sollol_node_slots_believed",
            "Slots the node is believed to have for the model.",
            labels=pair_labels,
        )
        limit = GaugeMetricFamily(
            "sollol_node_slots_limit",
            "Requests admission control lets run on the node for the model (the belief, one "
            "more while probing for more).",
            labels=pair_labels,
        )
        source = GaugeMetricFamily(
            "sollol_node_slots_source",
            "1 for where the slot belief comes from: configured, default, probing or learned.",
            labels=[*pair_labels, "source"],
        )
        max_loaded = GaugeMetricFamily(
            "sollol_node_max_loaded_models",
            "Models the node is believed to hold at once (configured, or learned from /api/ps).",
            labels=node_labels,
        )
        vram = GaugeMetricFamily(
            "sollol_node_vram_bytes",
            "Memory the node is believed to have for models, when known (configured, or "
            "learned from evictions).",
            labels=node_labels,
        )
        slots_used = GaugeMetricFamily(
            "sollol_node_slots_in_use",
            "Requests the proxy has on the node for this model (they share its slots).",
            labels=pair_labels,
        )
        loaded_count = GaugeMetricFamily(
            "sollol_node_loaded_models", "Models loaded on the node.", labels=node_labels
        )
        loaded = GaugeMetricFamily(
            "sollol_node_model_loaded", "1 for each model loaded on the node.", labels=pair_labels
        )
        available = GaugeMetricFamily(
            "sollol_node_models_available", "Models on the node's disk.", labels=node_labels
        )
        success = GaugeMetricFamily(
            "sollol_node_success_rate",
            "Recent share of the node's attempts that succeeded (decayed average).",
            labels=node_labels,
        )
        learned = {
            key: GaugeMetricFamily(f"sollol_learned_{name}", text, labels=pair_labels)
            for key, name, text in (
                ("decode_tokens_per_s", "decode_tokens_per_second", "Learned generation speed."),
                ("prefill_tokens_per_s", "prefill_tokens_per_second", "Learned prompt speed."),
                ("load_s", "load_seconds", "Learned model load time."),
                ("ttft_s", "ttft_seconds", "Learned time to first token of streamed answers."),
            )
        }
        for node in self._fleet.nodes.values():
            name = node.name
            up.add_metric([name], 1.0 if node.healthy else 0.0)
            in_flight.add_metric([name], node.in_flight)
            slots.add_metric([name], node.beliefs.prior(""))
            for model, belief in node.beliefs.slots.items():
                if model not in node.models:  # no longer listed: its label would be "other"
                    continue
                labels = [name, model]
                estimator = belief.estimator
                believed.add_metric(labels, estimator.believed)
                limit.add_metric(labels, estimator.limit)
                for value in capacity.SOURCES:
                    source.add_metric([*labels, value], float(value == estimator.source))
            max_loaded.add_metric([name], capacity.max_loaded(node))
            memory = capacity.vram_bytes(node)
            if memory is not None:
                vram.add_metric([name], memory)
            for model, count in node.model_in_flight.items():
                if model:
                    slots_used.add_metric([name, model], count)
            resident = node.loaded.keys() | node.recent.keys()
            loaded_count.add_metric([name], len(resident))
            for model in sorted(resident):
                loaded.add_metric([name, model], 1.0)
            available.add_metric([name], len(node.models))
            snapshot = self._learner.snapshot(name)
            success.add_metric([name], float(snapshot["success_rate"]))  # type: ignore[arg-type]
            models = snapshot["models"]
            assert isinstance(models, dict)
            for model, values in models.items():
                for key, family in learned.items():
                    if values[key] > 0:  # 0: never measured (e.g. no load seen yet)
                        family.add_metric([name, model], values[key])
        yield from (up, in_flight, slots, slots_used, loaded_count, loaded, available, success)
        yield from (believed, limit, source, max_loaded, vram)
        yield from learned.values()


class QueueCollector(Collector):
    """The priority queue, read at scrape time; `priority` is 0 to 10, so the labels are bounded."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "sollol_queue_waiting", "Requests waiting for a free slot.", labels=["priority"]
        )
        oldest = GaugeMetricFamily(
            "sollol_queue_oldest_wait_seconds",
            "How long the oldest waiting request of each priority has waited.",
            labels=["priority"],
        )
        turned_away = CounterMetricFamily(
            "sollol_queue_rejections",
            "Requests answered 503 by the queue: full, shed (for a more urgent one), timeout.",
            labels=["priority", "reason"],
        )
        left = CounterMetricFamily(
            "sollol_queue_abandoned",
            "Requests whose client went away while they waited.",
            labels=["priority"],
        )
        snapshot = self._admission.snapshot(limit=0)
        for priority, level in snapshot["by_priority"].items():
            waiting.add_metric([priority], level["waiting"])
            oldest.add_metric([priority], level["oldest_wait_s"])
            for reason, key in (("full", "rejected"), ("shed", "shed"), ("timeout", "timed_out")):
                turned_away.add_metric([priority, reason], level[key])
            left.add_metric([priority], level["left"])
        yield from (waiting, oldest, turned_away, left)


class HealthCollector(Collector):
    """Each node's health state and what the outlier detection and the retries did."""

    def __init__(self, fleet: Fleet, budget: RetryBudget) -> None:
        self._fleet = fleet
        self._budget = budget

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "sollol_node_state",
            "1 for the node's current health state (up, down, ejected, busy, half_open).",
            labels=["node", "state"],
        )
        counters = {
            key: CounterMetricFamily(f"sollol_node_{key}", text, labels=["node"])
            for key, text in (
                ("ejections", "Times the node was ejected by outlier detection."),
                ("busy", "Busy (queue full) 503 answers that cooled the node down."),
                ("retries", "Attempts the node took over after another node failed."),
            )
        }
        for node in self._fleet.nodes.values():
            current = node.health.current()
            for value in State:
                state.add_metric([node.name, value.value], 1.0 if value is current else 0.0)
            for key, family in counters.items():
                family.add_metric([node.name], getattr(node.health.counters, key))
        refused = CounterMetricFamily(
            "sollol_retries_refused",
            "Retries the global retry budget did not allow.",
        )
        refused.add_metric([], self._budget.refused)
        yield state
        yield from counters.values()
        yield refused


class PromptCacheCollector(Collector):
    """The prompt-cache model's predictions against what Ollama's timing fields showed, per
    node and model (labels bounded like the request series'): hit ratios are
    `rate(sollol_prompt_cache_hits_total{source="observed"}[5m])
    / rate(sollol_prompt_cache_judged_requests_total[5m])`."""

    def __init__(self, fleet: Fleet, prompt_cache: PromptCache) -> None:
        self._fleet = fleet
        self._prompt_cache = prompt_cache

    def collect(self) -> Iterator[Metric]:
        labels = ["node", "model"]
        judged = CounterMetricFamily(
            "sollol_prompt_cache_judged_requests",
            "Answers whose timing fields told whether the prompt was cached.",
            labels=labels,
        )
        hits = CounterMetricFamily(
            "sollol_prompt_cache_hits",
            "Of those, the ones that reused more than 10% of the prompt: as the proxy predicted "
            "when it sent them (source=predicted), as prompt_eval_duration showed (observed).",
            labels=[*labels, "source"],
        )
        agreed = CounterMetricFamily(
            "sollol_prompt_cache_agreements",
            "Judged answers whose hit or miss the proxy predicted right.",
            labels=labels,
        )
        prompt = CounterMetricFamily(
            "sollol_prompt_cache_prompt_tokens",
            "Prompt tokens of the judged answers (prompt_eval_count).",
            labels=labels,
        )
        cached = CounterMetricFamily(
            "sollol_prompt_cache_cached_tokens",
            "Prompt tokens reused from a slot, predicted and observed.",
            labels=[*labels, "source"],
        )
        scores: dict[tuple[str, str], Accuracy] = {}
        for (node, model), score in self._prompt_cache.accuracy.items():
            key = (node_label(self._fleet, node), model_label(self._fleet, model))
            scores.setdefault(key, Accuracy()).add(score)
        for (node, model), score in sorted(scores.items()):
            judged.add_metric([node, model], score.requests)
            hits.add_metric([node, model, "predicted"], score.predicted_hits)
            hits.add_metric([node, model, "observed"], score.observed_hits)
            agreed.add_metric([node, model], score.agreed)
            prompt.add_metric([node, model], score.prompt_tokens)
            cached.add_metric([node, model, "predicted"], score.predicted_tokens)
            cached.add_metric([node, model, "observed"], score.observed_tokens)
        warmups = CounterMetricFamily(
            "sollol_prompt_cache_warmups",
            "Prefills the proxy sent itself to copy a shared system prompt into an idle slot, "
            "by outcome (sent, done, failed).",
            labels=["outcome"],
        )
        counts = self._prompt_cache.warmups
        for outcome, value in (
            ("sent", counts.sent),
            ("done", counts.done),
            ("failed", counts.failed),
        ):
            warmups.add_metric([outcome], value)
        yield from (judged, hits, agreed, prompt, cached, warmups)
