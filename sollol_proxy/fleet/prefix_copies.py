"""How many of a model's runners hold each first prefix (a system prompt, a shared preamble),
kept as their slots change.

The prompt cache's probe prices pushing a shared prefix out of a slot by how many other nodes
hold it (prefix_demand.py `worth`): counted afresh, that was a walk of every candidate's slots
per request, a third of the probe at 100 nodes. Kept here instead, each runner is counted again
only after it changed (`stale`: every change of a runner goes through `PromptCache`, which marks
it), at the next probe of its model.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sollol_proxy.routing.slot_cache import SlotCache


class FirstCopies:
    """One model's runners: how many hold each first prefix, and what each was counted with."""

    __slots__ = ("counts", "held", "stale")

    def __init__(self) -> None:
        self.counts: dict[bytes, int] = {}  # first prefix -> runners holding it
        self.held: dict[str, frozenset[bytes]] = {}  # node -> the first prefixes counted for it
        self.stale: set[str] = set()  # nodes whose runner changed since it was counted

    def over(self, known: Mapping[str, SlotCache], nodes: Collection[str]) -> dict[bytes, int]:
        """The counts over the runners of `nodes`, some of `known` (the model's runners by node;
        the dict returned is not to be changed)."""
        counts, held = self.counts, self.held
        if self.stale:
            for node in self.stale:
                _drop(counts, held.pop(node, ()))
                runner = known.get(node)
                if runner is not None:
                    firsts = held[node] = runner.outsider().firsts
                    for first in firsts:
                        counts[first] = counts.get(first, 0) + 1
            self.stale.clear()
        if len(nodes) == len(held):  # every runner counted is among them (nodes <= held)
            return counts
        counts = dict(counts)
        for node in held.keys() - nodes:  # not a candidate now: left out
            _drop(counts, held[node])
        return counts


def _drop(counts: dict[bytes, int], firsts: Collection[bytes]) -> None:
    """One runner fewer holds each of `firsts` (a prefix none holds is not kept)."""
    for first in firsts:
        left = counts[first] - 1
        if left:
            counts[first] = left
        else:
            del counts[first]
