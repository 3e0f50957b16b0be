"""The prompt (KV) prefix cache of a loaded runner, after llama-server's slots (§5.7).

A runner has ``num_parallel`` slots. Each remembers the token sequence it last held: the
rendered prompt plus the output generated for it. A request takes the idle slot whose
cached text shares the longest prefix with its prompt, provided that prefix covers more
than ``SLOT_PROMPT_SIMILARITY`` of the prompt (llama-server's ``slot_prompt_similarity``,
0.1 in llama.cpp's common.h); among equally long prefixes the lowest slot index wins, as in
llama-server's ``get_available_slot``. Otherwise it takes the least recently used idle slot
(llama-server breaks ties between never-used slots towards the highest index, this cache
towards the lowest; no response shows a slot id, so only ``view()`` can tell). Whichever
slot is taken, the prefix it shares with the prompt is reused, never the whole prompt: at
least one token is always evaluated. A new runner (load, reload) starts empty. Not
simulated: llama-server's host-RAM prompt cache (``--cache-ram``), which the reference
lists as an upstream default not verified for Ollama's build.

Tokenisation is a deterministic stand-in: chat messages render as ``<|role|>content\\n``,
a generate request as ``<|system|>system\\n<|user|>prompt\\n``, the model's answer is
appended to the slot as ``<|assistant|>output\\n`` (so the next turn of a conversation
extends the previous one), a text of n characters is ``ceil(n / 4)`` tokens and a common
prefix of n characters is ``n // 4`` tokens.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
SLOT_PROMPT_SIMILARITY = 0.1
ASSISTANT_TAG = "<|assistant|>"
_BLOCKS = (256, 16, 1)


def render_chat(messages: list[Any]) -> str:
    """The prompt a chat renders to: one ``<|role|>content\\n`` per message, in order."""
    parts = []
    for msg in messages:
        if isinstance(msg, dict):
            parts.append(f"<|{str(msg.get('role', '')).lower()}|>{msg.get('content') or ''}\n")
    return "".join(parts)


def render_generate(system: str, prompt: str) -> str:
    """A generate request renders like a chat of an optional system and one user message."""
    head = f"<|system|>{system}\n" if system else ""
    return f"{head}<|user|>{prompt}\n"


def token_count(text: str) -> int:
    """ceil(len / 4): the stand-in tokenizer used for prompts and the prefix cache."""
    return -(-len(text) // CHARS_PER_TOKEN)


def common_prefix_len(a: str, b: str) -> int:
    """Length in characters of the common prefix, compared block by block in C."""
    if b.startswith(a):
        return len(a)
    if a.startswith(b):
        return len(b)
    i, n = 0, min(len(a), len(b))
    for block in _BLOCKS:  # coarse to fine: n/256 + 15 + 15 slice compares at most
        while i + block <= n and a[i : i + block] == b[i : i + block]:
            i += block
    return i


@dataclass(eq=False)
class Slot:
    index: int
    text: str = ""  # rendered prompt + "<|assistant|>output\n" of the last request
    last_used: int = 0
    busy: bool = False


@dataclass(frozen=True)
class SlotView:
    """A read-only copy of one slot, for tests and benchmarks."""

    index: int
    text: str  # what the slot holds: the last prompt it served plus that request's output
    tokens: int  # token_count(text)
    busy: bool
    last_used: int  # 0: never used; otherwise larger is more recent


@dataclass(frozen=True)
class SlotUse:
    """Which slot served one chat/generate request (``node.slot_uses``)."""

    model: str
    slot: int
    prompt: str  # the rendered prompt
    prompt_tokens: int  # token_count(prompt), the reported prompt_eval_count
    cached_tokens: int  # the part of it reused from the slot (not evaluated again)


class PrefixCache:
    """The slots of one runner. ``take`` picks a slot for a prompt and returns how many
    prompt tokens are reused; ``give_back`` stores what the slot now holds."""

    def __init__(self, num_slots: int) -> None:
        self.slots = [Slot(i) for i in range(max(num_slots, 1))]
        self._clock = itertools.count(1)

    def take(self, prompt: str) -> tuple[Slot, int]:
        idle = [s for s in self.slots if not s.busy]
        if not idle:  # the runner's semaphore prevents this; stay usable regardless
            idle = [Slot(len(self.slots))]
            self.slots.extend(idle)
        prompt_tokens = token_count(prompt)
        matches = [(common_prefix_len(s.text, prompt) // CHARS_PER_TOKEN, s) for s in idle]
        best_lcp, best = max(matches, key=lambda m: (m[0], -m[1].index))
        if best_lcp <= SLOT_PROMPT_SIMILARITY * prompt_tokens:
            best_lcp, best = min(matches, key=lambda m: (m[1].last_used, m[1].index))
        best.busy = True
        return best, max(0, min(best_lcp, prompt_tokens - 1))

    def give_back(self, slot: Slot, text: str) -> None:
        slot.text = text
        slot.busy = False
        slot.last_used = next(self._clock)

    def texts(self) -> list[str]:
        """What each slot holds, for tests and benchmarks."""
        return [s.text for s in self.slots]

    def view(self) -> tuple[SlotView, ...]:
        return tuple(
            SlotView(s.index, s.text, token_count(s.text), s.busy, s.last_used) for s in self.slots
        )
