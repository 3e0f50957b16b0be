"""What a prompt finds in one slot of a runner, by its prefix keys (reference 5.7).

The proxy cannot see tokens, only the request's prefix keys (`prefixes.py`: chained hashes of
each message, or of each 1 KiB block of a prompt, with cumulative token estimates). So a slot is
remembered as the keys of its last prompt plus the length of its answer, and a common prefix is
measured in whole keys. Keys are chained (a key stands for everything before it), so the longest
common prefix of two key lists is found by binary search. The answer is not hashed (that would
mean parsing the relayed stream); a request continuing the slot's conversation is credited with
it when its next message is within a factor of two of the answer's length (clients send the
answer back as the assistant's turn; the band absorbs the difference between Ollama's token
count and the proxy's four-characters-per-token estimate).

Not modelled: the chat template's header, which every rendered prompt starts with. For a prompt
of a few dozen tokens it alone can pass the similarity threshold, so that llama-server gives such
a prompt the lowest idle slot holding anything rather than the least recently used one; which of
two slots a short prompt overwrites is worth little either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# llama.cpp common.h `slot_prompt_similarity`: reuse a slot only above this share of the prompt.
SLOT_PROMPT_SIMILARITY = 0.1
# routing/analysis.py counts four tokens per message for the role header the template adds.
MESSAGE_TOKENS = 4
# Keys remembered per slot: a prompt longer than this is matched on its first MAX_KEYS prefixes.
MAX_KEYS = 1024

PrefixKeys = Sequence[tuple[bytes, int]]


@dataclass(slots=True, eq=False)
class Slot:
    index: int
    keys: tuple[bytes, ...] = ()  # the prefix keys of the prompt it holds, shortest first
    tokens: tuple[int, ...] = ()  # cumulative tokens at each key
    answer: int = 0  # tokens generated after that prompt (0: unknown or none)
    last_used: int = 0  # 0: never used; otherwise larger is more recent
    busy: bool = False
    started: float = 0.0  # when the request now in it took it (the caller's clock)
    ended: float = 0.0  # when its last request left it

    @property
    def held(self) -> int:
        """Prompt tokens this slot holds (its answer not counted)."""
        return self.tokens[-1] if self.tokens else 0


def common_keys(held: Sequence[bytes], keys: Sequence[bytes]) -> int:
    """How many leading keys are equal (chained keys: equal at i means equal before i)."""
    n = min(len(held), len(keys))
    if not n or held[0] != keys[0]:
        return 0
    if held[n - 1] == keys[n - 1]:
        return n
    lo, hi = 0, n - 1  # held[lo] matches, held[hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if held[mid] == keys[mid]:
            lo = mid
        else:
            hi = mid
    return lo + 1


def bounded(keys: PrefixKeys) -> PrefixKeys:
    """What a take keeps of a prompt's keys: the first MAX_KEYS, which are all a slot holds and
    is matched on, and the last, whose count is the whole prompt's and which names the turn."""
    if len(keys) <= MAX_KEYS + 1:
        return keys
    return (*keys[:MAX_KEYS], keys[-1])


def heads(keys: PrefixKeys) -> tuple[bytes, ...]:
    """The keys alone, for `common_tokens` (computed once per request, not per slot)."""
    # One C call: `zip(*keys)` yields the keys, then the tokens (a generator into a tuple is a
    # frame resumed per key).
    return next(zip(*keys, strict=True), ())


def common_tokens(slot: Slot, keys: PrefixKeys, keys_only: Sequence[bytes] | None = None) -> int:
    """Prompt tokens of `keys` that `slot` holds: the common prefix, plus the slot's answer when
    the request goes on with a message of about its length. `keys_only`: `heads(keys)`."""
    held = slot.keys
    if not held or not keys or held[0] != keys[0][0]:
        return 0  # the common case: another conversation, another system prompt
    matched = common_keys(held, heads(keys) if keys_only is None else keys_only)
    tokens = keys[matched - 1][1]
    if matched == len(held) and slot.answer and matched < len(keys):
        message = keys[matched][1] - tokens - MESSAGE_TOKENS
        if slot.answer // 2 - MESSAGE_TOKENS <= message <= 2 * slot.answer + MESSAGE_TOKENS:
            tokens = keys[matched][1]
    return tokens


def between_slots(a: Slot, b: Slot) -> int:
    """Prompt tokens two slots both hold."""
    matched = common_keys(a.keys, b.keys)
    return a.tokens[matched - 1] if matched else 0


def fill(slot: Slot, keys: PrefixKeys, answer: int) -> None:
    kept = keys[:MAX_KEYS]
    # Both tuples from one C call (twice a request: its reservation and its end).
    slot.keys, slot.tokens = zip(*kept, strict=True) if kept else ((), ())
    slot.answer = answer if len(kept) == len(keys) else 0
