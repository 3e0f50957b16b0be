"""Prometheus metrics: counters and histograms fed by finished requests, live gauges read at scrape.

Each app has its own `CollectorRegistry` (tests run many proxies in one process). Request-level
series come from the `RequestRecord` sink, kept as plain numbers until a scrape (series.py);
node state (up, in flight, loaded models, learned rates) is read from the fleet and the learner
when Prometheus scrapes, so nothing has to be updated on every change. Labels are bounded: route templates, configured node names, models the
fleet lists, the routing Reason categories.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from sollol_proxy.admission.admission import Admission
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.forward.record import Outcome, RequestRecord
from sollol_proxy.forward.retry import RetryBudget
from sollol_proxy.observe.collectors import (
    FleetCollector,
    HealthCollector,
    PromptCacheCollector,
    QueueCollector,
)
from sollol_proxy.observe.labels import model_label, node_label
from sollol_proxy.observe.series import CounterSeries, HistogramSeries, SeriesCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Requests range from a millisecond (a resident embedding) to minutes (a cold load, a long answer).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# From a free slot (microseconds) to the queue's maximum wait (minutes).
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
NO_STRATEGY = "none"  # pinned requests, requests without a model, fleet views


class Metrics:
    def __init__(
        self,
        fleet: Fleet,
        learner: Learner,
        admission: Admission,
        budget: RetryBudget,
        prompt_cache: PromptCache,
    ) -> None:
        self._fleet = fleet
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = CounterSeries(
            "sollol_requests",
            "Requests answered, by route template, model, node and status.",
            ["endpoint", "model", "node", "status"],
        )
        self.duration = HistogramSeries(
            "sollol_request_duration_seconds",
            "From the request's arrival to the last byte of its answer.",
            ["endpoint", "model"],
            DURATION_BUCKETS,
        )
        self.ttft = HistogramSeries(
            "sollol_time_to_first_token_seconds",
            "Streamed 200 answers: from the request's arrival to the first byte sent to the client.",
            ["endpoint", "model"],
            TTFT_BUCKETS,
        )
        self.tokens_in = CounterSeries(
            "sollol_input_tokens",
            "Prompt tokens Ollama evaluated (prompt_eval_count of the final object).",
            ["model", "node"],
        )
        self.tokens_out = CounterSeries(
            "sollol_output_tokens",
            "Tokens Ollama generated (eval_count of the final object).",
            ["model", "node"],
        )
        self.decisions = CounterSeries(
            "sollol_routing_decisions",
            "Answered requests by the strategy and the reason category of the node that served.",
            ["strategy", "reason"],
        )
        self.failovers = CounterSeries(
            "sollol_failovers",
            "Nodes given up before the first byte (refused, reset, timeout, 5xx, busy, a model the "
            "inventory listed but the node lacked); the next one was tried.",
            ["node"],
        )
        self.midstream = CounterSeries(
            "sollol_midstream_failures",
            "Answers a node broke off after the client had received part of them.",
            ["node"],
        )
        self.queue_wait = HistogramSeries(
            "sollol_queue_wait_seconds",
            "Time admitted requests waited in the proxy for a free slot, by priority.",
            ["priority"],
            QUEUE_BUCKETS,
        )
        r.register(
            SeriesCollector(
                self.requests,
                self.duration,
                self.ttft,
                self.tokens_in,
                self.tokens_out,
                self.decisions,
                self.failovers,
                self.midstream,
                self.queue_wait,
            )
        )
        r.register(FleetCollector(fleet, learner))
        r.register(HealthCollector(fleet, budget))
        r.register(QueueCollector(admission))
        r.register(PromptCacheCollector(fleet, prompt_cache))

    def observe(self, record: RequestRecord) -> None:
        """The RequestRecord sink."""
        model = model_label(self._fleet, record.model, record.node)
        node = node_label(self._fleet, record.node)
        endpoint = record.endpoint
        self.requests.inc((endpoint, model, node, record.status))
        self.duration.observe((endpoint, model), record.duration_s)
        if record.stream and record.status == 200 and record.ttft_s is not None:
            self.ttft.observe((endpoint, model), record.ttft_s)
        if record.tokens_in is not None:
            self.tokens_in.inc((model, node), record.tokens_in)
        if record.tokens_out is not None:
            self.tokens_out.inc((model, node), record.tokens_out)
        if record.reason:
            self.decisions.inc((record.strategy or NO_STRATEGY, record.reason))
        for failed, _ in record.failed_attempts:
            self.failovers.inc((node_label(self._fleet, failed),))
        if record.outcome is Outcome.MIDSTREAM_FAILURE:
            self.midstream.inc((node,))
        if record.admitted:
            self.queue_wait.observe((record.priority,), record.queue_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
