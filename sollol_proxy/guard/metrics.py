"""Per-key series for `/metrics`, read from the guard's counters when Prometheus scrapes.

The `key` label is a configured key's name (or `none` for requests refused before a key was
known), so clients cannot create series.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sollol_proxy.guard.guard import NO_KEY, Guard


class KeyCollector(Collector):
    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def collect(self) -> Iterator[Metric]:
        admitted = CounterMetricFamily(
            "sollol_key_requests", "Requests admitted, by API key.", labels=["key"]
        )
        tokens = CounterMetricFamily(
            "sollol_key_tokens",
            "Tokens Ollama counted for the key's answers (prompt: input, generated: output).",
            labels=["key", "kind"],
        )
        refused = CounterMetricFamily(
            "sollol_key_refused",
            "Requests refused: unauthorized (401), scope, model, remote_management (403),"
            " concurrency, requests, tokens (429).",
            labels=["key", "reason"],
        )
        in_flight = GaugeMetricFamily(
            "sollol_key_in_flight", "Requests in progress, by API key.", labels=["key"]
        )
        for name, usage in self._guard.usage.items():
            admitted.add_metric([name], usage.admitted)
            tokens.add_metric([name, "input"], usage.tokens_in)
            tokens.add_metric([name, "output"], usage.tokens_out)
            in_flight.add_metric([name], usage.in_flight)
            for reason, count in usage.refused.items():
                refused.add_metric([name, reason], count)
        for reason, count in self._guard.refused_without_key.items():
            refused.add_metric([NO_KEY, reason], count)
        yield from (admitted, tokens, refused, in_flight)
