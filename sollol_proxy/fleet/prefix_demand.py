"""How much the prefixes a node's slots hold are worth keeping: the demand for each shared first
prefix (a system prompt, a preamble) and how soon conversations come back.

The prompt-cache map (prompt_cache.py) prices pushing a prefix out of a slot with these. A shared
prefix is worth its share of the model's recent requests times the fleet's slots for the model,
split over the nodes that hold it; a conversation's own history is worth a share of its tokens
that decays with the time since it was used, over the mean time conversations take to come back
(learned from the follow-ups the proxy sees). Memory is bounded by `max_roots` counters and as
many remembered ends.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from sollol_proxy.routing.slot_match import PrefixKeys

# Demand for a shared prefix is a count of the requests that started with it, decayed by this
# factor per request of the model: it remembers about the last 1 / (1 - DECAY) requests.
DECAY = 0.99
# A conversation's own history (what its slot holds beyond the shared first prefix) is worth
# this share of its tokens when it was just used, decaying with the time since over the mean
# time conversations take to come back (learned from the follow-ups the proxy sees).
HISTORY_WORTH = 0.5
# Weight of a new sample in the mean time to come back.
GAP_ALPHA = 0.2


class Demand:
    def __init__(self, max_roots: int = 10_000) -> None:
        self._max_roots = max_roots
        # (model, first prefix key) -> (decayed count, the model's request number when counted)
        self._roots: OrderedDict[tuple[str, bytes], tuple[float, int]] = OrderedDict()
        self._requests: dict[str, int] = {}  # model -> requests counted
        # (model, last key of a prompt served) -> when it ended: a follow-up continues it
        self._ends: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self._gaps: dict[str, float] = {}  # model -> mean time before a follow-up

    def __len__(self) -> int:
        """Shared prefixes counted."""
        return len(self._roots)

    def count(self, model: str, keys: PrefixKeys, now: float) -> None:
        """A request for `model` with these prefix keys was sent: one more for its first prefix,
        and, when it follows up a prompt served earlier, a sample of the time to come back."""
        number = self._requests[model] = self._requests.get(model, 0) + 1
        root = (model, keys[0][0])
        count, seen = self._roots.pop(root, (0.0, number))
        self._roots[root] = (count * DECAY ** (number - seen) + 1.0, number)
        while len(self._roots) > self._max_roots:
            self._roots.popitem(last=False)
        if len(keys) >= 3:  # a follow-up: the previous turn's prompt ended two messages back
            ended = self._ends.pop((model, keys[-3][0]), None)
            if ended is not None:
                gap = self._gaps.get(model)
                sample = now - ended
                self._gaps[model] = sample if gap is None else gap + GAP_ALPHA * (sample - gap)

    def ended(self, model: str, keys: PrefixKeys, now: float) -> None:
        """A prompt with these keys was served and its answer ended: a follow-up continues it."""
        self._ends[(model, keys[-1][0])] = now
        while len(self._ends) > self._max_roots:
            self._ends.popitem(last=False)

    def worth(self, model: str, root: bytes, copies: int, fleet_slots: int) -> float:
        """How much losing one node's copy of a shared prefix costs, per token: its share of
        the model's recent requests times the fleet's slots for it (a prefix asked for about
        once per round of the slots is worth keeping), capped at 1, divided by the nodes that
        hold it (the others can serve it)."""
        count, seen = self._roots.get((model, root), (0.0, 0))
        if not count:
            return 0.0
        requests = self._requests.get(model, 0)
        # A share of the requests seen so far, (1 - DECAY**n) / (1 - DECAY) decayed: not of a
        # full window, which undervalued every prefix over the first hundred requests.
        share = count * DECAY ** (requests - seen) * (1 - DECAY) / (1 - DECAY**requests)
        return min(1.0, share * fleet_slots) / max(copies, 1)

    def history(self, model: str, tokens: int, idle_s: float) -> float:
        """What losing `tokens` of a conversation's own history, unused for `idle_s`, costs:
        nothing until the proxy has seen a conversation come back."""
        gap = self._gaps.get(model)
        if tokens <= 0 or not gap:
            return 0.0
        return tokens * HISTORY_WORTH * math.exp(-idle_s / gap)
