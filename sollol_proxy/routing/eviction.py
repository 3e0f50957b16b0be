"""What loading one more model on a node would push out, priced in seconds (reference 5.5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# An evicted model is likely to be wanted again: charge part of its reload to the newcomer.
RELOAD_WEIGHT = 0.5


@dataclass(frozen=True, slots=True)
class Runner:
    """A model loaded on a node."""

    model: str
    size: int  # bytes it holds in (V)RAM
    in_flight: int
    expires_ns: int  # when Ollama will unload it if idle (/api/ps expires_at)
    load_s: float  # how long loading it again would take
    drain_s: float  # how long its in-flight requests still need


def eviction_cost(
    loaded: Sequence[Runner], need_bytes: int, vram_bytes: int | None, max_loaded: int
) -> float:
    """Seconds the newcomer costs through evictions: waiting for busy victims to drain, plus a
    share of their reload. Victims are chosen like Ollama's findRunnerToUnload: the runner that
    expires first, an idle one if there is any."""
    remaining = sorted(loaded, key=lambda r: (r.expires_ns, r.model))
    used = sum(r.size for r in remaining)
    cost = 0.0
    while remaining and (
        len(remaining) >= max_loaded or (vram_bytes is not None and used + need_bytes > vram_bytes)
    ):
        victim = next((r for r in remaining if r.in_flight == 0), remaining[0])
        remaining.remove(victim)
        used -= victim.size
        cost += (victim.drain_s if victim.in_flight else 0.0) + RELOAD_WEIGHT * victim.load_s
    return cost
