"""Which node still holds which conversation's prompt in its KV cache (reference 5.7).

Ollama reuses a slot's cache for a matching prompt prefix on the same node and model. For every
request the analysis yields keys for each prefix (message boundaries, or prompt blocks) with the
tokens up to it. After a node served the request, its keys point at that node. A later request
asks: for each node, what is the longest of my prefixes it served?

A node only keeps so many prefixes: it has `num_parallel` slots per model, and a slot is
overwritten by the next conversation that lands in it. So an entry counts only while fewer than
`num_parallel` other conversations took a slot of that model there since. A request that found
its prefix on the node reuses its own slot and takes none from the others. A model that unloads or
reloads loses everything: its generation number moves on and older entries stop counting.
Memory is bounded: the map is an LRU of at most `max_entries` prefix keys.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

PrefixKeys = Sequence[tuple[bytes, int]]


class PromptCache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self._max_entries = max_entries
        # (model, prefix key) -> {node: (generation, sequence number, tokens)}
        self._entries: OrderedDict[tuple[str, bytes], dict[str, tuple[int, int, int]]] = (
            OrderedDict()
        )
        self._sequence: dict[tuple[str, str], int] = {}  # (node, model) -> conversations served
        self._generation: dict[tuple[str, str], int] = {}  # (node, model) -> loads seen

    def __len__(self) -> int:
        return len(self._entries)

    def cached_tokens(self, model: str, keys: PrefixKeys, slots: dict[str, int]) -> dict[str, int]:
        """For each node in `slots` (name -> num_parallel), the prompt tokens it likely holds."""
        found: dict[str, int] = {}
        for key, tokens in reversed(keys):
            entry = self._entries.get((model, key))
            if not entry:
                continue
            for node, (generation, sequence, _) in entry.items():
                if node in found or node not in slots:
                    continue
                pair = (node, model)
                if generation != self._generation.get(pair, 0):
                    continue
                if self._sequence.get(pair, 0) - sequence >= slots[node]:
                    continue
                found[node] = tokens
            if len(found) == len(slots):
                break
        return found

    def record(self, model: str, node: str, keys: PrefixKeys, *, new_slot: bool = True) -> None:
        """`node` just served a prompt with these prefixes; `new_slot` when none of them was
        cached there, so that it took a slot from another conversation."""
        if not keys:
            return
        pair = (node, model)
        sequence = self._sequence.get(pair, 0) + (1 if new_slot else 0)
        self._sequence[pair] = sequence
        generation = self._generation.get(pair, 0)
        for key, tokens in keys:
            entry = self._entries.get((model, key))
            if entry is None:
                entry = self._entries[(model, key)] = {}
            else:
                self._entries.move_to_end((model, key))
            entry[node] = (generation, sequence, tokens)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, node: str, models: Iterable[str]) -> None:
        """These models were unloaded or reloaded on `node`: their cache is gone."""
        for model in models:
            pair = (node, model)
            self._generation[pair] = self._generation.get(pair, 0) + 1
