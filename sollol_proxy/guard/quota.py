"""Per-key limits (requests in progress, requests and tokens per minute) and what each key used.

Counts over the last minute are kept in 60 one-second buckets, so a key's memory is fixed. Tokens
are Ollama's own counts (prompt and output, from the answer's final object), charged when the
answer ends: a request is admitted while the key is under its limits, so the one that crosses a
limit completes, and the next ones wait until the minute's count falls back under it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from sollol_proxy.config.access import ApiKey

BUCKETS = 60  # seconds in the window


class MinuteWindow:
    __slots__ = ("_counts", "_seconds")

    def __init__(self) -> None:
        self._counts = [0] * BUCKETS
        self._seconds = [-BUCKETS] * BUCKETS

    def add(self, now: float, amount: int) -> None:
        second = int(now)
        i = second % BUCKETS
        if self._seconds[i] != second:
            self._seconds[i], self._counts[i] = second, 0
        self._counts[i] += amount

    def _live(self, now: float) -> list[tuple[int, int]]:
        second = int(now)
        return sorted(
            (s, c) for s, c in zip(self._seconds, self._counts, strict=True) if second - s < BUCKETS
        )

    def total(self, now: float) -> int:
        return sum(count for _, count in self._live(now))

    def wait_under(self, now: float, limit: int) -> int:
        """Whole seconds until the count over the last minute is under `limit` (at least 1)."""
        live = self._live(now)
        total = sum(count for _, count in live)
        for second, count in live:
            total -= count
            if total < limit:
                return max(1, math.ceil(second + BUCKETS - now))
        return BUCKETS


@dataclass
class KeyUsage:
    in_flight: int = 0
    requests: MinuteWindow = field(default_factory=MinuteWindow)
    tokens: MinuteWindow = field(default_factory=MinuteWindow)
    admitted: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # reason -> count


class Refused(Exception):
    """A request the key may not make now or at all; answered with `status`."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message
        self.retry_after = retry_after


def admit(key: ApiKey, usage: KeyUsage, now: float) -> None:
    """Count a request against the key's limits, or raise Refused (429) if it is over one."""
    if key.max_concurrent is not None and usage.in_flight >= key.max_concurrent:
        raise Refused(
            429,
            "concurrency",
            f"API key '{key.name}' has {usage.in_flight} requests in progress"
            f" (limit {key.max_concurrent}); retry when one has finished",
            1,
        )
    if key.requests_per_minute is not None:
        count = usage.requests.total(now)
        if count >= key.requests_per_minute:
            raise Refused(
                429,
                "requests",
                f"API key '{key.name}' made {count} requests in the last minute"
                f" (limit {key.requests_per_minute} per minute)",
                usage.requests.wait_under(now, key.requests_per_minute),
            )
    if key.tokens_per_minute is not None:
        count = usage.tokens.total(now)
        if count >= key.tokens_per_minute:
            raise Refused(
                429,
                "tokens",
                f"API key '{key.name}' used {count} tokens in the last minute"
                f" (limit {key.tokens_per_minute} per minute)",
                usage.tokens.wait_under(now, key.tokens_per_minute),
            )
    usage.requests.add(now, 1)
    usage.admitted += 1


def charge(usage: KeyUsage, now: float, tokens_in: int | None, tokens_out: int | None) -> None:
    used_in, used_out = tokens_in or 0, tokens_out or 0
    usage.tokens_in += used_in
    usage.tokens_out += used_out
    if used_in or used_out:
        usage.tokens.add(now, used_in + used_out)
