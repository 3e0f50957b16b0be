"""Validation of the resilience settings: health probes, outlier ejection, retries, timeouts."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sollol_proxy.config.layers import Layers
from sollol_proxy.config.policies import OutlierPolicy, RetryPolicy
from sollol_proxy.config.values import absent_as, integer, seconds
from sollol_proxy.wire.routes import EXACT, Kind


def fraction(layers: Layers, key: str, default: float, high: float) -> float:
    value = layers.values.get(key, default)
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if not 0 <= number <= high:
        raise layers.error(key, f"expected a number from 0 to {high:g}, got {value!r}")
    return number


def at_least(layers: Layers, key: str, value: float, low_key: str, low: float) -> float:
    if value < low:
        section = key.rpartition(".")[0]
        raise layers.error(
            key, f"must be at least {low_key} ({low:g}s), got {value:g}s", f"{section}.{low_key}"
        )
    return value


# Routes whose answer comes from one node's inference: the ones a first-byte bound applies to.
_TIMED_ROUTES = sorted(path for path, (_, route) in EXACT.items() if route.kind is Kind.MODEL)


def route_timeouts(layers: Layers) -> Mapping[str, float]:
    key = "timeouts.routes"
    value = absent_as(layers, key, {})
    if not isinstance(value, dict):
        raise layers.error(key, "must map routes (e.g. /api/embed) to durations")
    bounds: dict[str, float] = {}
    for route, raw in value.items():
        if route not in _TIMED_ROUTES:
            raise layers.error(
                f"{key}.{route}", f"unknown route (known: {', '.join(_TIMED_ROUTES)})"
            )
        layers.set(f"{key}.{route}", raw, layers.origins[key])
        bounds[route] = seconds(layers, f"{key}.{route}", 0)
    return MappingProxyType(bounds)


def outlier(layers: Layers) -> OutlierPolicy:
    d = OutlierPolicy()
    base = seconds(layers, "outlier.base_ejection", d.base_ejection)
    longest = seconds(layers, "outlier.max_ejection", d.max_ejection)
    return OutlierPolicy(
        consecutive_failures=integer(
            layers, "outlier.consecutive_failures", d.consecutive_failures, 1, 1000
        ),
        base_ejection=base,
        max_ejection=at_least(layers, "outlier.max_ejection", longest, "base_ejection", base),
        busy_cooldown=seconds(layers, "outlier.busy_cooldown", d.busy_cooldown),
    )


def retries(layers: Layers) -> RetryPolicy:
    d = RetryPolicy()
    base = seconds(layers, "retries.backoff_base", d.backoff_base)
    longest = seconds(layers, "retries.backoff_max", d.backoff_max)
    return RetryPolicy(
        budget_ratio=fraction(layers, "retries.budget_ratio", d.budget_ratio, 1.0),
        min_concurrent=integer(layers, "retries.min_concurrent", d.min_concurrent, 0, 100_000),
        backoff_base=base,
        backoff_max=at_least(layers, "retries.backoff_max", longest, "backoff_base", base),
    )
