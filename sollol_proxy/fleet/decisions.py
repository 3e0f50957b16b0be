"""The most recent routing decisions, kept for GET /sollol/decisions."""

from __future__ import annotations

from collections import deque
from typing import Any


class DecisionLog:
    def __init__(self, keep: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=keep)

    def resize(self, keep: int) -> None:
        self._entries = deque(self._entries, maxlen=keep)

    def add(self, decision: dict[str, Any]) -> None:
        if self._entries.maxlen:
            self._entries.append(decision)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """Newest first."""
        entries = list(self._entries)[-limit:] if limit > 0 else []
        return entries[::-1]
