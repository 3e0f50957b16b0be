"""Memory bounds of a node from /api/ps snapshots: residency proves, evictions cap."""

from __future__ import annotations

from sollol_proxy.fleet.memory import MemoryBelief
from sollol_proxy.routing.eviction import Runner, victims


def _ps(*models: tuple[str, int]) -> list[dict[str, object]]:
    return [{"name": name, "size": vram, "size_vram": vram} for name, vram in models]


def _runners(*models: tuple[str, int]) -> list[Runner]:
    return [Runner(name, size, 0, 0, 1.0, 0.0) for name, size in models]


def test_memory_bounds_from_residency_and_evictions() -> None:
    gib = 1 << 30
    mem = MemoryBelief()
    assert (mem.vram_bytes, mem.max_loaded, mem.source) == (None, None, "default")
    assert mem.observe(_ps(("a", 4 * gib))) is False
    mem.observe(_ps(("a", 4 * gib), ("b", 6 * gib)))
    assert (mem.loaded_seen, mem.vram_seen, mem.source) == (2, 10 * gib, "resident")
    # c loads and a leaves: with 2 resident, 10 GiB + 8 GiB did not fit.
    assert mem.observe(_ps(("b", 6 * gib), ("c", 8 * gib))) is True
    assert (mem.max_loaded, mem.vram_bytes, mem.source) == (2, 18 * gib - 1, "evictions")
    # Priced against the learned memory, the same set does not fit: the eviction is foreseen.
    assert victims(_runners(("a", 4 * gib), ("b", 6 * gib)), 8 * gib, mem.vram_bytes, 3)
    # Three together later: that departure was an expiry, not a limit on the count.
    assert mem.observe(_ps(("b", 6 * gib), ("c", 8 * gib), ("d", 1 * gib))) is True
    assert (mem.max_loaded, mem.vram_bytes, mem.loaded_seen) == (None, 18 * gib - 1, 3)


def test_configured_memory_is_kept() -> None:
    mem = MemoryBelief(vram_bytes=24 << 30, max_loaded=2)
    mem.observe(_ps(("a", 1)))
    assert mem.observe(_ps(("b", 1))) is False
    assert (mem.vram_bytes, mem.max_loaded, mem.source) == (24 << 30, 2, "configured")
