"""Validation of the `queue.*` settings (admission control)."""

from __future__ import annotations

from typing import Any

from sollol_proxy.config.layers import Layers
from sollol_proxy.config.model import ConfigError, QueueBand, QueueConfig
from sollol_proxy.config.values import absent_as, boolean, integer, seconds


def _priority_range(layers: Layers, key: str, value: Any) -> tuple[int, int]:
    text = str(value).strip()
    low, _, high = text.partition("-")
    if not high:
        high = low
    if not (low.strip().isdigit() and high.strip().isdigit()):
        raise layers.error(key, f"expected a priority or a range like '8-10', got {value!r}")
    first, last = int(low), int(high)
    if not 0 <= first <= last <= 10:
        raise layers.error(key, f"expected priorities from 0 to 10, low to high, got {value!r}")
    return first, last


def _bands(layers: Layers, default_wait: float) -> tuple[QueueBand, ...]:
    raw = absent_as(layers, "queue.bands", [])
    if not isinstance(raw, list):
        raise layers.error("queue.bands", "must be a list of {priorities, max_wait, max_length}")
    bands: list[QueueBand] = []
    for index, entry in enumerate(raw):
        key = f"queue.bands[{index}]"
        if not isinstance(entry, dict) or "priorities" not in entry:
            raise layers.error(key, "must be a mapping with 'priorities' (e.g. '8-10')")
        unknown = set(entry) - {"priorities", "max_wait", "max_length"}
        if unknown:
            raise layers.error(
                f"{key}.{sorted(unknown)[0]}",
                "unknown key (known: max_length, max_wait, priorities)",
            )
        low, high = _priority_range(layers, f"{key}.priorities", entry["priorities"])
        for other in bands:
            if low <= other.high and other.low <= high:
                raise layers.error(
                    f"{key}.priorities", f"{low}-{high} overlaps the band {other.label}"
                )
        scoped = Layers()
        scoped.values = {k: v for k, v in entry.items() if k != "priorities"}
        scoped.origins = dict.fromkeys(scoped.values, layers.origins.get("queue.bands", "defaults"))
        try:
            max_wait = seconds(scoped, "max_wait", default_wait) if "max_wait" in entry else None
            max_length = (
                integer(scoped, "max_length", 0, 0, 1_000_000) if "max_length" in entry else None
            )
        except ConfigError as exc:
            raise ConfigError(exc.origin, f"{key}.{exc.key}", exc.problem) from exc
        bands.append(QueueBand(low, high, max_wait, max_length))
    return tuple(bands)


def queue(layers: Layers) -> QueueConfig:
    defaults = QueueConfig()
    max_wait = seconds(layers, "queue.max_wait", defaults.max_wait)
    window = layers.values.get("queue.affinity_window", defaults.affinity_window)
    if isinstance(window, bool) or not isinstance(window, int | float) or not 0 <= window <= 10:
        raise layers.error(
            "queue.affinity_window", f"expected priority levels from 0 to 10, got {window!r}"
        )
    return QueueConfig(
        enabled=boolean(layers, "queue.enabled", defaults.enabled),
        max_length=integer(layers, "queue.max_length", defaults.max_length, 0, 1_000_000),
        max_wait=max_wait,
        ageing=seconds(layers, "queue.ageing", defaults.ageing),
        affinity_window=float(window),
        bands=_bands(layers, max_wait),
    )
