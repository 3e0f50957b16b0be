"""The last hour of the proxy in fixed time buckets, for the dashboard's live charts.

A ring of buckets `bucket_s` wide (5 s by default) covering `horizon_s` (an hour by default: 720
complete buckets plus the one being filled). Memory is fixed: a bucket is reset and reused when
its slot comes round again, and latencies go into fixed log-spaced histograms (quarter-octave
bins from 1 ms to about 35 min), so p50/p95 per bucket need no samples kept. A slot whose bucket
belongs to an older time is simply stale and reads as empty, so a gap of any length (no traffic,
the process stopped) costs nothing to roll over. Times are wall-clock unix seconds passed in by
the caller (`time.time()`), because they are the charts' x axis.

`to_json(now, window_s)` covers the complete buckets of the last `window_s` seconds (the bucket
being filled is left out until it is over) and returns:

    {
      "bucket_s": 5,                      # bucket width, seconds
      "start": 1700000000,                # start of the first bucket (unix seconds)
      "end": 1700000900,                  # end of the last bucket (= last start + bucket_s)
      "times": [1700000000, ...],         # start of each bucket; every array below aligns to it
      "requests_per_s": {"ok": [...], "error": [...], ...},  # by outcome, in constructor order
      "ttft_s": {"p50": [...], "p95": [...]},    # time to first byte of requests that had one
      "total_s": {"p50": [...], "p95": [...]},   # whole request duration
      "tokens_out_per_s": [...],
      "queue_depth": {"max": [...], "last": [...]},  # requests waiting for a slot, as sampled
      "queue_wait_s": {"p95": [...]},            # wait of requests admitted in the bucket
      "nodes": [                          # nodes with any data in the window, sorted by name
        {"name": "a", "slots_in_use_max": [...], "slots_in_use_mean": [...],
         "slots_believed": [...], "tokens_out_per_s": [...]}
      ],
      "marks": [{"time": 1700000123.4, "node": "a", "from": "up", "to": "down"}]
    }

Nulls: every value is null in a bucket the proxy never touched (no request finished and no
sample was taken, e.g. it was not running); in a bucket it did touch, rates are numbers (0 with
no traffic), percentiles are null when nothing was observed, and sampled values (queue depth,
a node's slots) are null when no sample was taken. Requests and tokens count in the bucket in
which the request finished; percentiles are a bin's geometric midpoint (within 9% of the true
value); rates, percentiles and means have three significant digits, and queue depths and slot
counts are integers (`slots_believed` and queue `last` from the bucket's last sample). Marks are
the node state changes within the window, oldest first, times to the millisecond, at most
MAX_MARKS of them.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

LOW_S = 0.001  # the first histogram bin's lower bound; anything faster lands in the bin below
BINS_PER_OCTAVE = 4
OCTAVES = 21  # up to 1 ms * 2**21, about 35 min; anything slower lands in the bin above
_BINS = BINS_PER_OCTAVE * OCTAVES + 2
_ZEROS = array("I", [0]) * _BINS
# A flapping node must not grow the marks, or the JSON, without bound within the hour.
MAX_MARKS = 300


def _bin(seconds: float) -> int:
    if seconds < LOW_S:
        return 0
    return min(int(math.log2(seconds / LOW_S) * BINS_PER_OCTAVE) + 1, _BINS - 1)


def _bin_value(index: int) -> float:
    if index == 0:
        return LOW_S
    if index == _BINS - 1:
        return LOW_S * 2.0**OCTAVES
    return LOW_S * 2.0 ** ((index - 0.5) / BINS_PER_OCTAVE)


def _short(value: float) -> float:
    """Three significant digits, and no ".0": the hour's JSON stays small (see the module doc)."""
    rounded = float(f"{value:.3g}")
    return int(rounded) if rounded.is_integer() else rounded


# What a quantile in each bin reads as: three significant digits, as precise as the bins are.
_BIN_VALUES = tuple(_short(_bin_value(i)) for i in range(_BINS))


class _Histogram:
    __slots__ = ("bins", "count")

    def __init__(self) -> None:
        self.bins = array("I", _ZEROS)
        self.count = 0

    def clear(self) -> None:
        self.bins[:] = _ZEROS  # in place: same length, no new array
        self.count = 0

    def add(self, seconds: float) -> None:
        self.bins[_bin(seconds)] += 1
        self.count += 1

    def quantiles(self, *qs: float) -> list[float | None]:
        """Nearest-rank quantiles, each the midpoint of the bin that holds it; qs ascending."""
        if not self.count:
            return [None] * len(qs)
        ranks = [max(1, math.ceil(q * self.count)) for q in qs]
        found: list[float | None] = []
        seen = 0
        for index, n in enumerate(self.bins):
            seen += n
            while len(found) < len(ranks) and seen >= ranks[len(found)]:
                found.append(_BIN_VALUES[index])
            if len(found) == len(ranks):
                break
        return found


class _NodeBucket:
    __slots__ = ("believed", "in_use_max", "in_use_sum", "samples", "seen", "tokens_out")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.seen = False
        self.samples = 0
        self.in_use_max = 0
        self.in_use_sum = 0
        self.believed = 0
        self.tokens_out = 0


class _Bucket:
    __slots__ = (
        "depth_last",
        "depth_max",
        "index",
        "nodes",
        "outcomes",
        "queue_wait",
        "tokens_out",
        "total",
        "ttft",
    )

    def __init__(self, outcomes: int) -> None:
        self.index = -1  # bucket number (unix seconds // bucket_s) of the data it holds
        self.outcomes = [0] * outcomes
        self.ttft = _Histogram()
        self.total = _Histogram()
        self.queue_wait = _Histogram()
        self.tokens_out = 0
        self.depth_max: int | None = None
        self.depth_last: int | None = None
        # Kept across resets so each node's entry is allocated once per slot, not per bucket.
        self.nodes: dict[str, _NodeBucket] = {}

    def reset(self, index: int) -> None:
        self.index = index
        for i in range(len(self.outcomes)):
            self.outcomes[i] = 0
        self.ttft.clear()
        self.total.clear()
        self.queue_wait.clear()
        self.tokens_out = 0
        self.depth_max = self.depth_last = None
        for node in self.nodes.values():
            node.clear()

    def node(self, name: str) -> _NodeBucket:
        entry = self.nodes.get(name)
        if entry is None:
            entry = self.nodes[name] = _NodeBucket()
        entry.seen = True
        return entry


class TimeSeries:
    """Fed by the request sink, a once-a-second sampler and node state changes; read as JSON."""

    def __init__(
        self, outcomes: Sequence[str], *, bucket_s: float = 5, horizon_s: float = 3600
    ) -> None:
        if bucket_s <= 0 or horizon_s < bucket_s:
            raise ValueError("need bucket_s > 0 and horizon_s >= bucket_s")
        self._width = int(bucket_s) if float(bucket_s).is_integer() else bucket_s
        self._outcomes = {name: i for i, name in enumerate(outcomes)}
        # One slot more than the horizon holds: the bucket being filled.
        self._ring = [_Bucket(len(self._outcomes)) for _ in range(int(horizon_s // bucket_s) + 1)]
        self._horizon_s = horizon_s
        self._last_seen: dict[str, int] = {}  # node -> the last bucket number with its data
        self._marks: deque[tuple[float, str, str, str]] = deque(maxlen=MAX_MARKS)

    @property
    def bucket_count(self) -> int:
        return len(self._ring)

    def record_request(
        self,
        now: float,
        outcome: str,
        ttft_s: float | None,
        total_s: float,
        tokens_out: int | None,
        node: str | None,
        queue_wait_s: float | None,
    ) -> None:
        """A finished request; `node` is the one that answered, None when none did."""
        index = self._outcomes.get(outcome)
        if index is None:
            raise ValueError(f"unknown outcome {outcome!r}, expected one of {list(self._outcomes)}")
        bucket = self._current(now)
        if bucket is None:
            return
        bucket.outcomes[index] += 1
        bucket.total.add(total_s)
        if ttft_s is not None:
            bucket.ttft.add(ttft_s)
        if queue_wait_s is not None:
            bucket.queue_wait.add(queue_wait_s)
        bucket.tokens_out += tokens_out or 0
        if node:
            bucket.node(node).tokens_out += tokens_out or 0
            self._seen(node, bucket.index)

    def sample(self, now: float, queue_depth: int, nodes: Mapping[str, tuple[int, int]]) -> None:
        """The queue and each node's (slots in use, slots believed), about once a second."""
        bucket = self._current(now)
        if bucket is None:
            return
        bucket.depth_last = queue_depth
        bucket.depth_max = max(queue_depth, bucket.depth_max or 0)
        for name, (in_use, believed) in nodes.items():
            entry = bucket.node(name)
            entry.samples += 1
            entry.in_use_sum += in_use
            entry.in_use_max = max(entry.in_use_max, in_use)
            entry.believed = believed
            self._seen(name, bucket.index)
        self._forget_gone_nodes(bucket.index)

    def mark(self, now: float, node: str, old_state: str, new_state: str) -> None:
        self._drop_old_marks(now)
        self._marks.append((now, node, old_state, new_state))

    def to_json(self, now: float, window_s: float) -> dict[str, Any]:
        width = self._width
        last = math.floor(now / width) - 1  # the last complete bucket
        count = max(1, min(len(self._ring) - 1, math.ceil(window_s / width)))
        first = last - count + 1
        buckets = [self._valid(i) for i in range(first, last + 1)]
        start, end = first * width, (last + 1) * width
        self._drop_old_marks(now)
        return {
            "bucket_s": width,
            "start": start,
            "end": end,
            "times": [i * width for i in range(first, last + 1)],
            "requests_per_s": {
                name: _each(buckets, lambda b, i=i: _rate(b.outcomes[i], width))
                for name, i in self._outcomes.items()
            },
            "ttft_s": _percentiles(buckets, lambda b: b.ttft),
            "total_s": _percentiles(buckets, lambda b: b.total),
            "tokens_out_per_s": _each(buckets, lambda b: _rate(b.tokens_out, width)),
            "queue_depth": {
                "max": _each(buckets, lambda b: b.depth_max),
                "last": _each(buckets, lambda b: b.depth_last),
            },
            "queue_wait_s": {"p95": _each(buckets, lambda b: b.queue_wait.quantiles(0.95)[0])},
            "nodes": [
                _node_series(name, buckets, width)
                for name in sorted(
                    {n for b in buckets if b is not None for n, e in b.nodes.items() if e.seen}
                )
            ],
            "marks": [
                {"time": round(t, 3), "node": node, "from": old, "to": new}
                for t, node, old, new in self._marks
                if start <= t < end
            ],
        }

    def _current(self, now: float) -> _Bucket | None:
        """The bucket for `now`, reset first if its slot still holds an older one."""
        index = math.floor(now / self._width)
        bucket = self._ring[index % len(self._ring)]
        if bucket.index > index:
            return None  # older than the horizon (the wall clock stepped back): nowhere to go
        if bucket.index != index:
            bucket.reset(index)
        return bucket

    def _valid(self, index: int) -> _Bucket | None:
        bucket = self._ring[index % len(self._ring)]
        return bucket if bucket.index == index else None

    def _seen(self, node: str, index: int) -> None:
        # max: a late record (the wall clock stepped back) must not make a node look gone early
        self._last_seen[node] = max(index, self._last_seen.get(node, index))

    def _forget_gone_nodes(self, index: int) -> None:
        """Nodes with no data in the whole ring (removed from the config) give back their entries."""
        gone = [n for n, seen in self._last_seen.items() if index - seen >= len(self._ring)]
        for name in gone:
            del self._last_seen[name]
            for bucket in self._ring:
                bucket.nodes.pop(name, None)

    def _drop_old_marks(self, now: float) -> None:
        while self._marks and self._marks[0][0] < now - self._horizon_s:
            self._marks.popleft()


def _rate(count: int, width: float) -> float:
    return _short(count / width)


def _each(buckets: list[_Bucket | None], value: Callable[[_Bucket], Any]) -> list[Any]:
    return [None if b is None else value(b) for b in buckets]


def _percentiles(
    buckets: list[_Bucket | None], histogram: Callable[[_Bucket], _Histogram]
) -> dict[str, list[float | None]]:
    pairs = _each(buckets, lambda b: histogram(b).quantiles(0.5, 0.95))
    return {
        "p50": [None if p is None else p[0] for p in pairs],
        "p95": [None if p is None else p[1] for p in pairs],
    }


def _node_series(name: str, buckets: list[_Bucket | None], width: float) -> dict[str, Any]:
    entries = [None if b is None else b.nodes.get(name) for b in buckets]
    sampled = [e if e is not None and e.samples else None for e in entries]
    return {
        "name": name,
        "slots_in_use_max": [None if e is None else e.in_use_max for e in sampled],
        "slots_in_use_mean": [
            None if e is None else _short(e.in_use_sum / e.samples) for e in sampled
        ],
        "slots_believed": [None if e is None else e.believed for e in sampled],
        "tokens_out_per_s": [
            None if b is None else _rate(e.tokens_out if e else 0, width)
            for b, e in zip(buckets, entries, strict=True)
        ],
    }
