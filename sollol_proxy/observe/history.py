"""What feeds the dashboard's charts: each finished request, a sample of the queue and of every
node's slots once a second, and each node state change, kept in a `TimeSeries`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sollol_proxy.admission.admission import Admission
from sollol_proxy.fleet.capacity import believed_total
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.health import State
from sollol_proxy.forward.record import Outcome, RequestRecord
from sollol_proxy.observe.timeseries import TimeSeries

SAMPLE_S = 1.0
BUCKET_S = 5.0
HORIZON_S = 3600.0


class History:
    def __init__(
        self, fleet: Fleet, admission: Admission, clock: Callable[[], float] = time.time
    ) -> None:
        self._fleet = fleet
        self._admission = admission
        self._clock = clock
        self.series = TimeSeries(
            [outcome.value for outcome in Outcome], bucket_s=BUCKET_S, horizon_s=HORIZON_S
        )

    def observe(self, record: RequestRecord) -> None:
        """A record sink: one bucket update per request, nothing allocated per request."""
        self.series.record_request(
            self._clock(),
            record.outcome.value,
            record.ttft_s,
            record.duration_s,
            record.tokens_out,
            record.node or None,
            record.queue_s if record.admitted else None,
        )

    def state_changed(self, node: str, previous: State, state: State) -> None:
        self.series.mark(self._clock(), node, previous.value, state.value)

    def sample(self) -> None:
        nodes = {
            name: (sum(self._admission.slots.in_use(name).values()), believed_total(node))
            for name, node in self._fleet.nodes.items()
        }
        self.series.sample(self._clock(), self._admission.waiting, nodes)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            self.sample()

    def to_json(self, window_s: float) -> dict[str, Any]:
        return self.series.to_json(self._clock(), window_s)
