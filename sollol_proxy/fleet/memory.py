"""How many models a node keeps loaded and how much memory they may use, learned from /api/ps
instead of configuration (OLLAMA_MAX_LOADED_MODELS and the GPU's memory, which Ollama never says).

Memory (`MemoryBelief`) is bounded from /api/ps snapshots: models resident together prove the
node holds that many and that much size_vram; a model that left when another loaded (an
eviction) caps both: fewer models than were resident plus the newcomer, and less memory than
their sum. A later co-residency above a cap drops the cap: that departure was an expiry or an explicit unload, not an eviction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class MemoryBelief:
    """How many models a node keeps loaded and how much VRAM they may use, from /api/ps."""

    def __init__(self, *, vram_bytes: int | None = None, max_loaded: int | None = None) -> None:
        self._vram_fixed = vram_bytes
        self._loaded_fixed = max_loaded
        self.vram_seen = 0  # largest size_vram sum resident together: a lower bound
        self.loaded_seen = 0  # largest number of models resident together: a lower bound
        self._vram_cap: int | None = None
        self._loaded_cap: int | None = None
        self._resident: dict[str, int] | None = None  # name -> size_vram, last snapshot

    def configure(self, *, vram_bytes: int | None, max_loaded: int | None) -> None:
        """New overrides from a reload; what was observed stays."""
        self._vram_fixed, self._loaded_fixed = vram_bytes, max_loaded

    @property
    def vram_bytes(self) -> int | None:
        """Usable VRAM: configured, or the cap an eviction showed; None while unknown."""
        return self._vram_fixed if self._vram_fixed is not None else self._vram_cap

    @property
    def max_loaded(self) -> int | None:
        """Models held at once: configured, or the cap an eviction showed; None while unknown
        (`loaded_seen` is then a lower bound)."""
        return self._loaded_fixed if self._loaded_fixed is not None else self._loaded_cap

    @property
    def source(self) -> str:
        if self._vram_fixed is not None and self._loaded_fixed is not None:
            return "configured"
        if self._vram_cap is not None or self._loaded_cap is not None:
            return "evictions"
        return "resident" if self.loaded_seen else "default"

    def observe(self, models: Iterable[Mapping[str, Any]]) -> bool:
        """Fold in one /api/ps `models` list; True when `vram_bytes` or `max_loaded` changed."""
        before = (self.vram_bytes, self.max_loaded)
        resident: dict[str, int] = {}
        for item in models:
            name, size_vram = item.get("name"), item.get("size_vram")
            if isinstance(name, str):
                resident[name] = size_vram if isinstance(size_vram, int) else 0
        previous, self._resident = self._resident, resident
        if previous is not None:
            loaded = resident.keys() - previous.keys()
            if loaded and previous.keys() - resident.keys():
                self._evicted(previous, sum(resident[m] for m in loaded))
        self.loaded_seen = max(self.loaded_seen, len(resident))
        self.vram_seen = max(self.vram_seen, sum(resident.values()))
        # A cap below what was later resident together was not an eviction's.
        if self._loaded_cap is not None and self._loaded_cap < self.loaded_seen:
            self._loaded_cap = None
        if self._vram_cap is not None and self._vram_cap < self.vram_seen:
            self._vram_cap = None
        return (self.vram_bytes, self.max_loaded) != before

    def _evicted(self, previous: dict[str, int], incoming: int) -> None:
        count = len(previous)
        self._loaded_cap = count if self._loaded_cap is None else min(self._loaded_cap, count)
        # The newcomer did not fit beside them: the memory is less than their sum, so the
        # same set priced against the cap must come out as not fitting (`used + need > vram`).
        ceiling = sum(previous.values()) + incoming - 1
        if ceiling > 0:  # CPU-only runners report no size_vram: nothing to learn about VRAM
            self._vram_cap = ceiling if self._vram_cap is None else min(self._vram_cap, ceiling)
