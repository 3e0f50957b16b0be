"""The dashboard's time series: buckets, gaps, percentiles from histograms, and bounded memory."""

from __future__ import annotations

import json
import math
import random
import tracemalloc
from typing import Any

import pytest

from sollol_proxy.forward.record import Outcome
from sollol_proxy.observe.timeseries import MAX_MARKS, TimeSeries

OUTCOMES = [o.value for o in Outcome] + ["rejected"]
T0 = 1_700_000_000  # a bucket start for 5 s buckets
HOUR = 3600
# Quarter-octave bins: a percentile read from them is within one bin width of the exact one.
BIN_RATIO = 2 ** (1 / 4)


def series(**kwargs: Any) -> TimeSeries:
    return TimeSeries(OUTCOMES, **kwargs)


def request(
    ts: TimeSeries,
    now: float,
    outcome: str = "ok",
    *,
    ttft: float | None = 0.2,
    total: float = 1.0,
    tokens: int | None = 10,
    node: str | None = "a",
    wait: float | None = None,
) -> None:
    ts.record_request(now, outcome, ttft, total, tokens, node, wait)


def at(data: dict[str, Any], start: float) -> int:
    return data["times"].index(start)


def test_requests_land_in_the_bucket_of_their_time_and_rates_are_per_second() -> None:
    ts = series()
    for _ in range(3):
        request(ts, T0 + 1)
    request(ts, T0 + 4.99, "error")
    request(ts, T0 + 5, "client_closed", tokens=50)
    data = ts.to_json(T0 + 10, 10)
    assert data["bucket_s"] == 5
    assert data["times"] == [T0, T0 + 5]
    assert (data["start"], data["end"]) == (T0, T0 + 10)
    assert data["requests_per_s"]["ok"] == [0.6, 0]
    assert data["requests_per_s"]["error"] == [0.2, 0]
    assert data["requests_per_s"]["client_closed"] == [0, 0.2]
    assert list(data["requests_per_s"]) == OUTCOMES
    assert data["tokens_out_per_s"] == [8.0, 10.0]


def test_the_bucket_being_filled_is_left_out_until_it_is_over() -> None:
    ts = series()
    request(ts, T0 + 7)
    assert ts.to_json(T0 + 9.9, 60)["times"][-1] == T0
    assert ts.to_json(T0 + 10, 60)["requests_per_s"]["ok"][-1] == 0.2


def test_a_gap_without_any_call_reads_as_nulls_not_stale_data() -> None:
    ts = series()
    request(ts, T0)
    request(ts, T0 + 600, total=3.0)
    data = ts.to_json(T0 + 605, 900)
    ok = data["requests_per_s"]["ok"]
    first, last = at(data, T0), at(data, T0 + 600)
    assert ok[first] == ok[last] == 0.2
    assert set(ok[first + 1 : last]) == {None}
    assert set(ok[:first]) == {None}  # before the proxy saw anything
    assert set(data["total_s"]["p50"][first + 1 : last]) == {None}
    assert data["nodes"][0]["tokens_out_per_s"][first + 1] is None


def test_a_quiet_but_running_proxy_reads_as_zero_traffic() -> None:
    ts = series()
    for second in range(20):
        ts.sample(T0 + second, 0, {"a": (0, 2)})
    request(ts, T0 + 12, total=2.0)
    data = ts.to_json(T0 + 20, 20)
    assert data["requests_per_s"]["ok"] == [0, 0, 0.2, 0]
    assert data["total_s"]["p50"][0] is None  # nothing finished: no latency, not zero latency
    assert data["total_s"]["p50"][2] is not None
    assert data["queue_depth"] == {"max": [0, 0, 0, 0], "last": [0, 0, 0, 0]}


def test_a_slot_reused_after_the_horizon_holds_only_the_new_bucket() -> None:
    ts = series(bucket_s=5, horizon_s=60)
    request(ts, T0, "error")
    later = T0 + 5 * ts.bucket_count  # the same ring slot, one round later
    request(ts, later)
    data = ts.to_json(later + 5, 60)
    assert len(data["times"]) == 12
    assert data["requests_per_s"]["error"] == [None] * 11 + [0]
    assert data["requests_per_s"]["ok"] == [None] * 11 + [0.2]


def test_a_gap_longer_than_the_horizon_forgets_everything_before_it() -> None:
    ts = series(horizon_s=60)
    for second in range(60):
        request(ts, T0 + second)
    request(ts, T0 + 7 * HOUR + 2)
    data = ts.to_json(T0 + 7 * HOUR + 5, 60)
    assert [v for v in data["requests_per_s"]["ok"] if v is not None] == [0.2]


def test_a_time_older_than_the_horizon_is_dropped_and_a_recent_one_kept() -> None:
    ts = series(horizon_s=60)
    request(ts, T0 + 100)
    request(ts, T0 + 100 - 120)  # the clock stepped back two minutes: out of the ring
    request(ts, T0 + 100 - 10)  # ten seconds: its bucket is still there
    data = ts.to_json(T0 + 105, 60)
    assert data["requests_per_s"]["ok"][at(data, T0 + 90)] == 0.2
    assert sum(v for v in data["requests_per_s"]["ok"] if v) == 0.4


def exact(values: list[float], q: float) -> float:
    return sorted(values)[max(1, math.ceil(q * len(values))) - 1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_from_the_histogram_are_within_a_bin_of_the_exact_ones(seed: int) -> None:
    rng = random.Random(seed)
    ts = series()
    totals = [10 ** rng.uniform(-2, 2) for _ in range(500)]
    ttfts = [t / 10 for t in totals[:300]]
    waits = [rng.uniform(0.001, 5) for _ in range(200)]
    for i, total in enumerate(totals):
        ttft = ttfts[i] if i < len(ttfts) else None
        wait = waits[i] if i < len(waits) else None
        request(ts, T0 + i / 100, ttft=ttft, total=total, wait=wait)
    data = ts.to_json(T0 + 5, 5)
    for name, values in (("total_s", totals), ("ttft_s", ttfts)):
        for q in (0.5, 0.95):
            got = data[name][f"p{round(q * 100)}"][0]
            assert exact(values, q) / BIN_RATIO <= got <= exact(values, q) * BIN_RATIO, (name, q)
    wait_p95 = data["queue_wait_s"]["p95"][0]
    assert exact(waits, 0.95) / BIN_RATIO <= wait_p95 <= exact(waits, 0.95) * BIN_RATIO


def test_percentiles_are_per_time_bucket() -> None:
    ts = series()
    for i in range(10):
        request(ts, T0 + i / 10, total=0.1)
        request(ts, T0 + 5 + i / 10, total=20.0)
    data = ts.to_json(T0 + 10, 10)
    assert data["total_s"]["p95"][0] < 0.12
    assert data["total_s"]["p50"][1] > 18


def test_per_node_slots_and_tokens() -> None:
    ts = series()
    for second, (a_in_use, b_in_use) in enumerate([(1, 0), (3, 0), (2, 1), (2, 1), (2, 0)]):
        ts.sample(T0 + second, second, {"a": (a_in_use, 4), "b": (b_in_use, 2)})
    ts.sample(T0 + 5, 0, {"a": (0, 3)})  # b left the config
    request(ts, T0 + 1, tokens=100, node="b")
    request(ts, T0 + 2, tokens=None, node="b")
    request(ts, T0 + 6, "error", tokens=None, node=None)  # no node answered
    data = ts.to_json(T0 + 10, 10)
    a, b = data["nodes"]
    assert (a["name"], b["name"]) == ("a", "b")
    assert a["slots_in_use_max"] == [3, 0]
    assert a["slots_in_use_mean"] == [2.0, 0.0]
    assert a["slots_believed"] == [4, 3]
    assert a["tokens_out_per_s"] == [0, 0]
    assert b["slots_in_use_max"] == [1, None]
    assert b["slots_in_use_mean"] == [0.4, None]
    assert b["slots_believed"] == [2, None]
    assert b["tokens_out_per_s"] == [20.0, 0]
    assert data["queue_depth"] == {"max": [4, 0], "last": [4, 0]}


def test_a_node_appears_only_in_windows_with_its_data() -> None:
    ts = series()
    ts.sample(T0, 0, {"gone": (1, 1), "a": (0, 1)})
    for second in range(1, 1200):
        ts.sample(T0 + second, 0, {"a": (0, 1)})
    assert [n["name"] for n in ts.to_json(T0 + 1200, 900)["nodes"]] == ["a"]
    assert [n["name"] for n in ts.to_json(T0 + 1200, HOUR)["nodes"]] == ["a", "gone"]


def test_marks_are_kept_within_the_horizon_and_the_window() -> None:
    ts = series()
    ts.mark(T0 + 1.25, "a", "up", "ejected")
    ts.mark(T0 + 1000, "a", "ejected", "half_open")
    ts.mark(T0 + 1002, "a", "half_open", "up")
    data = ts.to_json(T0 + 1005, HOUR)
    assert data["marks"] == [
        {"time": T0 + 1.25, "node": "a", "from": "up", "to": "ejected"},
        {"time": T0 + 1000, "node": "a", "from": "ejected", "to": "half_open"},
        {"time": T0 + 1002, "node": "a", "from": "half_open", "to": "up"},
    ]
    assert len(ts.to_json(T0 + 1005, 60)["marks"]) == 2
    ts.mark(T0 + HOUR + 500, "a", "up", "busy")
    data = ts.to_json(T0 + HOUR + 505, HOUR)
    assert [m["to"] for m in data["marks"]] == ["half_open", "up", "busy"]


def test_a_flapping_node_keeps_a_bounded_number_of_marks() -> None:
    ts = series()
    for i in range(3 * MAX_MARKS):
        ts.mark(T0 + i, "a", "up" if i % 2 else "down", "down" if i % 2 else "up")
    marks = ts.to_json(T0 + 3 * MAX_MARKS + 5, HOUR)["marks"]
    assert len(marks) == MAX_MARKS
    assert marks[-1]["time"] == T0 + 3 * MAX_MARKS - 1


def test_an_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        request(series(), T0, "timeout")


def busy_second(ts: TimeSeries, rng: random.Random, now: float, nodes: list[str]) -> None:
    """Five requests and one sample, with every field set, as on a loaded fleet."""
    for k in range(5):
        request(
            ts,
            now + k / 5,
            rng.choice(OUTCOMES),
            ttft=rng.uniform(0.01, 5),
            total=rng.uniform(0.1, 90),
            tokens=rng.randint(1, 2000),
            node=rng.choice(nodes),
            wait=rng.uniform(0, 30),
        )
    ts.sample(now + 0.5, rng.randint(0, 500), {n: (rng.randint(0, 16), 16) for n in nodes})


def test_an_hour_of_a_loaded_ten_node_fleet_is_under_200_kb_of_json() -> None:
    rng = random.Random(7)
    ts = series()
    nodes = [f"gpu-node-{i:02d}.example" for i in range(10)]
    for second in range(HOUR):
        now = T0 + second + rng.random() / 3
        busy_second(ts, rng, now, nodes)
        ts.mark(now, rng.choice(nodes), "half_open", "up")
    data = ts.to_json(T0 + HOUR, HOUR)
    assert len(data["times"]) == 720
    assert len(data["nodes"]) == 10
    assert None not in data["total_s"]["p95"]
    assert len(json.dumps(data, separators=(",", ":"))) < 200_000


def test_memory_stays_flat_over_many_hours_even_as_nodes_come_and_go() -> None:
    rng = random.Random(3)
    ts = series()
    buckets = ts.bucket_count

    def run(start_hour: int, hours: int) -> None:
        for second in range(start_hour * HOUR, (start_hour + hours) * HOUR, 2):
            # a different set of node names every hour, as config reloads might bring
            hour = second // HOUR
            busy_second(ts, rng, T0 + second, [f"n{hour}-{i}" for i in range(4)])

    tracemalloc.start()
    try:
        # The ring turns over twice before the first reading: dicts are at their usual sizes.
        run(0, 3)
        before = tracemalloc.get_traced_memory()[0]
        run(3, 5)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert ts.bucket_count == buckets == 721
    assert len(ts.to_json(T0 + 8 * HOUR, 10 * HOUR)["times"]) == 720
    # Dicts resizing move it by some 100 KiB; keeping every node ever seen would add ~300 KiB/hour.
    assert after - before < 256 * 1024
    assert [n["name"] for n in ts.to_json(T0 + 8 * HOUR, 60)["nodes"]] == [
        f"n7-{i}" for i in range(4)
    ]


def test_the_horizon_and_bucket_width_must_make_sense() -> None:
    with pytest.raises(ValueError):
        series(bucket_s=0)
    with pytest.raises(ValueError):
        series(bucket_s=10, horizon_s=5)
