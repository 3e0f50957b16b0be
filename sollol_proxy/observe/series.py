"""Request series for /metrics kept as plain numbers, turned into Prometheus families at scrape.

A finished request adds to a few dict entries keyed by its label values: no lock, no child
object looked up per operation, as prometheus_client's `Counter` and `Histogram` do (a dozen
locked operations per request). `collect()` exports exactly what those classes would: the same
family, sample names and labels, `_created` per series (unless prometheus_client's created
series are disabled), cumulative `le` buckets, series in the order they first appeared.
Label values may be anything that `str()` turns into the label (a status code as an int).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence

import prometheus_client.metrics
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

Key = tuple[object, ...]


def _created_series() -> bool:
    # prometheus_client's switch (PROMETHEUS_DISABLE_CREATED_SERIES, disable_created_metrics()).
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class CounterSeries:
    __slots__ = ("created", "documentation", "labels", "name", "values")

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name  # without `_total`, as prometheus_client's Counter takes it
        self.documentation = documentation
        self.labels = tuple(labels)
        self.values: dict[Key, float] = {}
        self.created: dict[Key, float] = {}

    def inc(self, key: Key, amount: float = 1) -> None:
        values = self.values
        if key in values:
            values[key] += amount
        else:
            values[key] = amount
            self.created[key] = time.time()

    def collect(self) -> Metric:
        family = Metric(self.name, self.documentation, "counter")
        created = _created_series()
        for key, value in self.values.items():
            labels = dict(zip(self.labels, map(str, key), strict=True))
            family.add_sample(self.name + "_total", labels, value)
            if created:
                family.add_sample(self.name + "_created", labels, self.created[key])
        return family


class HistogramSeries:
    __slots__ = ("_le", "bounds", "created", "documentation", "labels", "name", "values")

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.bounds = tuple(float(b) for b in buckets)  # +Inf is implied, as in prometheus_client
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        # per series: the count of each bucket (not cumulative; +Inf last), then the sum
        self.values: dict[Key, list[float]] = {}
        self.created: dict[Key, float] = {}

    def observe(self, key: Key, value: float) -> None:
        counts = self.values.get(key)
        if counts is None:
            counts = self.values[key] = [0] * (len(self.bounds) + 2)
            self.created[key] = time.time()
        counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value
        counts[-1] += value

    def collect(self) -> Metric:
        family = Metric(self.name, self.documentation, "histogram")
        created = _created_series()
        for key, counts in self.values.items():
            labels = dict(zip(self.labels, map(str, key), strict=True))
            cumulative = 0.0
            for le, count in zip(self._le, counts, strict=False):
                cumulative += count
                family.add_sample(self.name + "_bucket", {**labels, "le": le}, cumulative)
            family.add_sample(self.name + "_count", labels, cumulative)
            family.add_sample(self.name + "_sum", labels, counts[-1])
            if created:
                family.add_sample(self.name + "_created", labels, self.created[key])
        return family


class SeriesCollector(Collector):
    """Exports the series, in the order given, when the registry is collected."""

    def __init__(self, *series: CounterSeries | HistogramSeries) -> None:
        self._series = series

    def collect(self) -> Iterator[Metric]:
        for series in self._series:
            yield series.collect()
