"""How many request-body bytes the proxy holds at once, in all and per client address.

A model request's body is read whole (it is routed by its contents and resent on failover) and
held until the request ends, including while it waits in the queue. `limits.max_body_bytes`
bounds one body; this bounds their sum (`limits.max_body_memory`), so that a burst of large
bodies cannot take the machine's memory. A body is counted before it is read: by its declared
`Content-Length`, or chunk by chunk as a chunked upload arrives; what it holds is given back
when its request ends, however it ends. One client address may hold at most a quarter of the
budget (and always at least one body of the largest size), so that one client's large uploads
leave room for everyone else's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# One client address holds at most this share of the budget. Clients behind one NAT or one
# reverse proxy share it; chat bodies are kilobytes, so it only binds on many large uploads.
CLIENT_SHARE = 4


class BodyBudgetFull(Exception):
    """Holding the body would exceed the budget, in all or for its client (503)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "total" or "client", for the metrics


class BodyBudget:
    def __init__(self, total: int, max_body: int) -> None:
        self.total = self.per_client = 0
        self.resize(total, max_body)
        self.held = 0
        self.by_client: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # by reason

    def resize(self, total: int, max_body: int) -> None:
        """A reload's new sizes; what is held stays held, and counts against them."""
        self.total = total
        self.per_client = min(total, max(total // CLIENT_SHARE, max_body))

    def hold(self, client: str) -> BodyHold:
        return BodyHold(self, client)

    def fits(self, client: str, size: int) -> bool:
        """Whether a body of `size` bytes from `client` would be taken now (an `Expect:
        100-continue` is answered by this, before the body is sent)."""
        return self.held + size <= self.total and self.by_client[client] + size <= self.per_client

    def _take(self, client: str, size: int) -> None:
        if self.held + size > self.total:
            reason, message = (
                "total",
                f"sollol-proxy is holding too many request bodies ({self.held} bytes of its"
                f" limits.max_body_memory {self.total}); try again shortly",
            )
        elif self.by_client[client] + size > self.per_client:
            reason, message = (
                "client",
                f"too many request bodies from this client at once ({self.by_client[client]}"
                f" bytes held; a client may hold {self.per_client}); try again shortly",
            )
        else:
            self.held += size
            self.by_client[client] += size
            return
        self.refused[reason] += 1
        raise BodyBudgetFull(message, reason)

    def _give_back(self, client: str, size: int) -> None:
        self.held -= size
        self.by_client[client] -= size
        if not self.by_client[client]:
            del self.by_client[client]  # the counter does not grow with every client seen


class BodyHold:
    """What one request holds of the budget; `release` (once the request ends) gives it back."""

    __slots__ = ("_budget", "_client", "size")

    def __init__(self, budget: BodyBudget, client: str) -> None:
        self._budget, self._client, self.size = budget, client, 0

    def take(self, size: int) -> None:
        """Count `size` more bytes, or raise BodyBudgetFull (nothing more is then counted)."""
        if size > 0:
            self._budget._take(self._client, size)
            self.size += size

    def release(self) -> None:
        if self.size:
            self._budget._give_back(self._client, self.size)
            self.size = 0


class BodyCollector(Collector):
    """The budget for `/metrics`, read at scrape time."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "sollol_body_bytes_held", "Request-body bytes held now, all requests together."
        )
        held.add_metric([], self._budget.held)
        limit = GaugeMetricFamily(
            "sollol_body_bytes_limit", "limits.max_body_memory: the most body bytes held at once."
        )
        limit.add_metric([], self._budget.total)
        refused = CounterMetricFamily(
            "sollol_body_refused",
            "Requests answered 503 because their body would exceed limits.max_body_memory"
            " (total) or one client's share of it (client).",
            labels=["reason"],
        )
        for reason in ("total", "client"):
            refused.add_metric([reason], self._budget.refused[reason])
        yield from (held, limit, refused)
