"""What `/metrics` and the dashboard show of the shared state: whether Redis answers, its
round trips, and the lease decisions (granted by Redis, refused, or taken alone)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sollol_proxy.shared.health import SharedHealth
from sollol_proxy.shared.lease_ops import OPERATIONS
from sollol_proxy.shared.link import Link
from sollol_proxy.shared.slots import SharedSlots


class SharedCollector(Collector):
    def __init__(self, link: Link, slots: SharedSlots, health: SharedHealth) -> None:
        self._link, self._slots, self._health = link, slots, health

    def collect(self) -> Iterator[Metric]:
        link, slots = self._link, self._slots
        up = GaugeMetricFamily(
            "sollol_shared_state_up",
            "1 while Redis answers and this replica shares its state; 0 while it decides alone.",
        )
        up.add_metric([], 1.0 if link.up else 0.0)
        yield up
        yield CounterMetricFamily(
            "sollol_shared_state_outages",
            "Times Redis stopped answering (or did not answer at start-up).",
            value=link.outages,
        )
        yield CounterMetricFamily(
            "sollol_shared_round_trips",
            "Round trips to Redis (each a pipeline of one or more operations).",
            value=link.round_trips,
        )
        yield CounterMetricFamily(
            "sollol_shared_request_round_trips",
            "Round trips to Redis of the requests' path (grants, releases, registrations of "
            "waiters; several requests' operations share one), the rest being periodic.",
            value=slots.leases.trips,
        )
        yield CounterMetricFamily(
            "sollol_shared_round_trip_seconds",
            "Time spent in round trips to Redis.",
            value=link.round_trip_s,
        )
        kinds = CounterMetricFamily(
            "sollol_shared_request_round_trips_by_kind",
            "Round trips of the requests' path by what they carried: their operations' kinds "
            "joined by '+' (grant, regrant: a request's grant after a refusal or a wait, "
            "release, return: a handed slot nobody took given back, take, enqueue, forget).",
            labels=["carrying"],
        )
        for kind, count in sorted(slots.leases.trip_kinds.items()):
            kinds.add_metric([kind], count)
        yield kinds
        operations = CounterMetricFamily(
            "sollol_shared_lease_operations",
            "Lease operations sent to Redis, by kind: grant (a request asks), release (a slot "
            "given back, with its hand-over), take (a handed slot taken, sent lazily), enqueue "
            "(a waiter registered lazily), forget (a waiter left), write_back (what this replica "
            "holds, rewritten after Redis came back). Several share one round trip.",
            labels=["operation"],
        )
        for name in (*OPERATIONS.values(), "write_back"):
            operations.add_metric([name], slots.leases.operations[name])
        yield operations
        leases = CounterMetricFamily(
            "sollol_shared_leases",
            "Slot leases: granted by Redis when asked, handed by another request's release to "
            "a request waiting here (no asking), refused (a more urgent waiter or no slot left "
            "among the replicas), or taken alone while Redis did not answer.",
            labels=["result"],
        )
        leases.add_metric(["granted"], slots.leases.granted)
        leases.add_metric(["handed"], slots.leases.taken)
        leases.add_metric(["refused"], slots.leases.refused)
        leases.add_metric(["alone"], slots.leases.alone)
        yield leases
        yield CounterMetricFamily(
            "sollol_shared_handed_returned",
            "Slots a release handed to this replica that none of its requests took in time: "
            "given back (and handed on).",
            value=slots.leases.returned,
        )
        yield CounterMetricFamily(
            "sollol_shared_handed_overbooked",
            "Slots handed to this replica that two of its requests took (one through Redis, one "
            "without asking): one request over the bound until either ends.",
            value=slots.leases.overbooked,
        )
        yield CounterMetricFamily(
            "sollol_shared_ejections_applied",
            "Node ejections made by another replica and applied here.",
            value=self._health.applied,
        )


def alerts(link: Link) -> list[dict[str, str]]:
    """The dashboard's alert while Redis does not answer."""
    if link.up:
        return []
    since = link.down_since or time.time()
    return [
        {
            "severity": "critical",
            "kind": "shared_state",
            "node": "",
            "message": f"Redis at {link.where} unreachable for {time.time() - since:.0f}s "
            f"({link.reason}): this replica decides alone (slots, queue, ejections)",
        }
    ]
