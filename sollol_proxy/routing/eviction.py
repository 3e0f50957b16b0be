"""What loading one more model on a node would push out, priced in seconds (reference 5.5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# An evicted model that is wanted (demand 1: as much as the most requested model, held by no
# other node) will have to be loaded again: charge that reload to the newcomer.
RELOAD_WEIGHT = 1.0
# /api/ps shows a keep_alive of -1 as an expiry centuries away; Ollama evicts those last.
FOREVER_NS = 200 * 365 * 24 * 3600 * 10**9


@dataclass(frozen=True, slots=True)
class Runner:
    """A model loaded on a node."""

    model: str
    size: int  # bytes it holds in (V)RAM
    in_flight: int
    expires_ns: int  # /api/ps expires_at, relative to now: only "forever" matters for the order
    load_s: float  # how long loading it again would take
    drain_s: float  # how long its in-flight requests still need
    demand: float = 1.0  # how likely it is to be wanted again soon, 0..1


def victims(
    loaded: Sequence[Runner], need_bytes: int, vram_bytes: int | None, max_loaded: int
) -> list[Runner]:
    """The runners Ollama's findRunnerToUnload would unload to make room, in order.

    Ollama sorts by session duration (kept-forever last), then by model path, and takes the first
    idle runner, else the first one. The proxy cannot see the blob path; the model name stands in.
    """
    remaining = sorted(loaded, key=lambda r: (r.expires_ns >= FOREVER_NS, r.model))
    used = sum(r.size for r in remaining)
    chosen = []
    while remaining and (
        len(remaining) >= max_loaded or (vram_bytes is not None and used + need_bytes > vram_bytes)
    ):
        victim = next((r for r in remaining if r.in_flight == 0), remaining[0])
        remaining.remove(victim)
        used -= victim.size
        chosen.append(victim)
    return chosen


def eviction_cost(
    loaded: Sequence[Runner], need_bytes: int, vram_bytes: int | None, max_loaded: int
) -> float:
    """Seconds the newcomer costs through evictions: waiting for busy victims to drain, plus the
    share of their reload that their demand makes likely."""
    return sum(
        (victim.drain_s if victim.in_flight else 0.0)
        + RELOAD_WEIGHT * victim.demand * victim.load_s
        for victim in victims(loaded, need_bytes, vram_bytes, max_loaded)
    )
