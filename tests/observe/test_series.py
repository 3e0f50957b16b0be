"""The request series export exactly what prometheus_client's Counter and Histogram would."""

from __future__ import annotations

import random
import re
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sollol_proxy.admission.admission import Admission
from sollol_proxy.config import QueueConfig, load_config
from sollol_proxy.config.policies import Priors
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.forward.record import Outcome, RequestRecord
from sollol_proxy.forward.retry import RetryBudget
from sollol_proxy.observe.metrics import (
    DURATION_BUCKETS,
    NO_STRATEGY,
    QUEUE_BUCKETS,
    TTFT_BUCKETS,
    Metrics,
)
from sollol_proxy.observe.series import CounterSeries, HistogramSeries, SeriesCollector

CREATED = re.compile(r"^(\w+_created\{.*\}) [0-9.e+]+$", re.MULTILINE)


def masked(text: bytes) -> str:
    """The exposition with the `_created` times (when each series began) left out."""
    return CREATED.sub(r"\1 <time>", text.decode())


def test_counter_and_histogram_match_prometheus_client() -> None:
    ours = CounterSeries("x_requests", "Requests.", ["endpoint", "status"])
    histogram = HistogramSeries("x_seconds", "Time.", ["endpoint"], (0.01, 0.1, 1, 10))
    registry = CollectorRegistry()
    registry.register(SeriesCollector(ours, histogram))
    reference = CollectorRegistry()
    counter = Counter("x_requests", "Requests.", ["endpoint", "status"], registry=reference)
    seconds = Histogram(
        "x_seconds", "Time.", ["endpoint"], buckets=(0.01, 0.1, 1, 10), registry=reference
    )
    rng = random.Random(1)
    before = time.time()
    # Values on the bounds, below the first, above the last; integer and float amounts.
    for value in [0.01, 0.1, 1, 10, 0.0, 0.5, 11.0, *(rng.expovariate(1) for _ in range(300))]:
        endpoint = rng.choice(["/api/chat", "/api/generate", "other"])
        status = rng.choice([200, 404, 499])
        amount = rng.choice([1, 3, 2.5])
        ours.inc((endpoint, status), amount)
        counter.labels(endpoint, str(status)).inc(amount)
        histogram.observe((endpoint,), value)
        seconds.labels(endpoint).observe(value)
    assert masked(generate_latest(registry)) == masked(generate_latest(reference))
    created = [
        float(v)
        for v in re.findall(r"_created\{.*\} ([0-9.e+]+)", generate_latest(registry).decode())
    ]
    assert created and all(before <= c <= time.time() for c in created)


def _reference_observe(registry: CollectorRegistry, nodes: set[str]) -> object:
    """The request series as they were made with prometheus_client before (issue #12)."""
    requests = Counter(
        "sollol_requests",
        "Requests answered, by route template, model, node and status.",
        ["endpoint", "model", "node", "status"],
        registry=registry,
    )
    duration = Histogram(
        "sollol_request_duration_seconds",
        "From the request's arrival to the last byte of its answer.",
        ["endpoint", "model"],
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    ttft = Histogram(
        "sollol_time_to_first_token_seconds",
        "Streamed 200 answers: from the request's arrival to the first byte sent to the client.",
        ["endpoint", "model"],
        buckets=TTFT_BUCKETS,
        registry=registry,
    )
    tokens_in = Counter(
        "sollol_input_tokens",
        "Prompt tokens Ollama evaluated (prompt_eval_count of the final object).",
        ["model", "node"],
        registry=registry,
    )
    tokens_out = Counter(
        "sollol_output_tokens",
        "Tokens Ollama generated (eval_count of the final object).",
        ["model", "node"],
        registry=registry,
    )
    decisions = Counter(
        "sollol_routing_decisions",
        "Answered requests by the strategy and the reason category of the node that served.",
        ["strategy", "reason"],
        registry=registry,
    )
    failovers = Counter(
        "sollol_failovers",
        "Nodes given up before the first byte (refused, reset, timeout, 5xx, busy, a model the "
        "inventory listed but the node lacked); the next one was tried.",
        ["node"],
        registry=registry,
    )
    midstream = Counter(
        "sollol_midstream_failures",
        "Answers a node broke off after the client had received part of them.",
        ["node"],
        registry=registry,
    )
    queue_wait = Histogram(
        "sollol_queue_wait_seconds",
        "Time admitted requests waited in the proxy for a free slot, by priority.",
        ["priority"],
        buckets=QUEUE_BUCKETS,
        registry=registry,
    )

    def observe(record: RequestRecord, model: str, node: str) -> None:
        requests.labels(record.endpoint, model, node, str(record.status)).inc()
        duration.labels(record.endpoint, model).observe(record.duration_s)
        if record.stream and record.status == 200 and record.ttft_s is not None:
            ttft.labels(record.endpoint, model).observe(record.ttft_s)
        if record.tokens_in is not None:
            tokens_in.labels(model, node).inc(record.tokens_in)
        if record.tokens_out is not None:
            tokens_out.labels(model, node).inc(record.tokens_out)
        if record.reason:
            decisions.labels(record.strategy or NO_STRATEGY, record.reason).inc()
        for failed, _ in record.failed_attempts:
            failovers.labels(failed if failed in nodes else "other").inc()
        if record.outcome is Outcome.MIDSTREAM_FAILURE:
            midstream.labels(node).inc()
        if record.admitted:
            queue_wait.labels(str(record.priority)).observe(record.queue_s)

    return observe


def test_the_request_series_are_those_prometheus_client_made() -> None:
    config = load_config(None, env={}, overrides={"nodes": ["http://a:1", "http://b:1"]})
    fleet = Fleet(config, None, PromptCache())  # type: ignore[arg-type]  # no probe is sent
    a, b = fleet.nodes.values()
    a.models["llama3.2:latest"] = {}
    b.models["qwen2.5:7b"] = {}
    metrics = Metrics(
        fleet,
        Learner(Priors()),
        Admission(QueueConfig()),
        RetryBudget(config.retries),
        PromptCache(),
    )
    reference = CollectorRegistry()
    observe = _reference_observe(reference, set(fleet.nodes))
    rng = random.Random(2)
    for _ in range(500):
        record = RequestRecord(
            "id", "POST", rng.choice(["/api/chat", "/v1/chat/completions"]), None
        )
        record.model = rng.choice(["llama3.2:latest", "qwen2.5:7b", "nope:latest", ""])
        record.node = rng.choice([a.name, b.name, ""])
        record.status = rng.choice([200, 200, 404, 502, 499])
        record.outcome = rng.choice(list(Outcome))
        record.stream = rng.random() < 0.5
        record.ttft_s = rng.choice([None, rng.expovariate(20)])
        record.duration_s = rng.expovariate(2)
        record.tokens_in = rng.choice([None, rng.randrange(1000)])
        record.tokens_out = rng.choice([None, rng.randrange(1000)])
        record.reason, record.strategy = rng.choice([("", ""), ("resident", "performance")])
        record.failed_attempts = rng.choice([[], [(a.name, "reset")], [("gone", "x")]])
        record.admitted, record.priority = rng.choice([(False, None), (True, rng.randrange(11))])
        record.queue_s = rng.expovariate(5)
        metrics.observe(record)
        served = record.node
        model = record.model
        if model and not any(model in n.models for n in fleet.nodes.values()):
            model = "other"
        observe(record, model, served)  # type: ignore[operator]
    ours = masked(metrics.render())
    expected = masked(generate_latest(reference))
    assert expected in ours  # the same families, in the same order, before the live gauges
    assert ours.index(expected) == 0
