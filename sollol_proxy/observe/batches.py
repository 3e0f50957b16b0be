"""Batch jobs and embedding work as the dashboard and /metrics show them (read at request or
scrape time from the job runner's and the embedding speed's in-memory state, never the disk)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sollol_proxy.embed.api import job_json
from sollol_proxy.embed.jobs import JobRunner
from sollol_proxy.embed.speed import EmbedSpeed
from sollol_proxy.fleet.fleet import Fleet

JOBS_SHOWN = 10
_ORDER = {"running": 0, "queued": 1}  # then the finished ones, newest first


class Batches:
    def __init__(self, runner: JobRunner, speed: EmbedSpeed, fleet: Fleet) -> None:
        self.runner = runner
        self.speed = speed
        self.fleet = fleet

    def to_json(self) -> list[dict[str, Any]]:
        """The running job, the queued ones, then the latest finished ones (for the page)."""
        jobs = sorted(
            self.runner.jobs.values(),
            key=lambda j: (_ORDER.get(j.status, 2), -j.created if j.over else j.created),
        )
        return [job_json(j, self.runner.rate(j), self.runner.note(j.id)) for j in jobs[:JOBS_SHOWN]]

    def node_rates(self) -> dict[str, float]:
        """Learned documents/s per configured node (names only the configuration gives)."""
        return {n: r for n, r in self.speed.by_node().items() if n in self.fleet.nodes}


class BatchCollector(Collector):
    """`sollol_batch_*` (jobs) and `sollol_embed_*` (every embedding sub-batch, per node)."""

    def __init__(self, batches: Batches) -> None:
        self._batches = batches

    def collect(self) -> Iterator[Metric]:
        runner, speed, fleet = self._batches.runner, self._batches.speed, self._batches.fleet
        queued = GaugeMetricFamily(
            "sollol_batch_documents_queued",
            "Documents of batch jobs that have no result yet (queued and running jobs).",
        )
        queued.add_metric([], runner.queued_documents())
        documents = CounterMetricFamily(
            "sollol_batch_documents",
            "Documents of batch jobs given a result since start: done (a vector) or failed.",
            labels=["result"],
        )
        documents.add_metric(["done"], runner.done)
        documents.add_metric(["failed"], runner.failed)
        jobs = GaugeMetricFamily(
            "sollol_batch_jobs", "Batch jobs waiting or running.", labels=["status"]
        )
        for status in ("queued", "running"):
            jobs.add_metric([status], sum(j.status == status for j in runner.jobs.values()))
        embedded = CounterMetricFamily(
            "sollol_embed_documents",
            "Inputs embedded per node by the proxy's sub-batches (split calls, merged calls and "
            "batch jobs), by result.",
            labels=["node", "result"],
        )
        rate = GaugeMetricFamily(
            "sollol_embed_documents_per_second",
            "Learned embedding speed of the node, in documents per second.",
            labels=["node"],
        )
        for name in fleet.nodes:
            embedded.add_metric([name, "done"], speed.done[name])
            embedded.add_metric([name, "failed"], speed.failed[name])
        for name, value in self._batches.node_rates().items():
            rate.add_metric([name], value)
        yield from (queued, documents, jobs, embedded, rate)
