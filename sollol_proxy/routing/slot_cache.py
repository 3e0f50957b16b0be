"""What one runner's slots hold, predicted the way llama-server fills them (reference 5.7).

A loaded model has `num_parallel` slots. Each keeps the tokens of the last request it served: the
prompt, then the answer. Ollama passes no slot id, so llama-server picks one for each request
among the idle slots: the slot sharing the longest prefix with the prompt, when that prefix is
more than `SLOT_PROMPT_SIMILARITY` of the prompt (lowest index among equals), else the least
recently used slot. The shared prefix is reused, the rest evaluated, and the slot then holds the
new prompt and its answer. A runner that loads or reloads starts with empty slots. What a prompt
finds in one slot, by its prefix keys, is `slot_match.py`.

Requests beyond the slots wait on the runner's semaphore (reference 5.2) and take a slot, by
the same rule, when one is released. Everything here is pure and synchronous: the caller owns
the clock and the instances.

Given node URLs only, the proxy learns a runner's slot count while using it (issue #11), and the
belief starts low: a runner believed to have one slot while it has two sees every request of the
proxy go through that one slot, so the model pushes out prefixes that the node still holds in the
slot the proxy did not know of. When the belief grows, the runner's recent requests (the last
`HISTORY_EVENTS` dispatches and ends) are replayed on the new slot count, which gives what the
node's slots have held all along, and the requests in flight are moved to the slots the replay
gave them (those waiting beyond the old count were running on the node).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter

from sollol_proxy.routing.slot_match import (
    SLOT_PROMPT_SIMILARITY,
    PrefixKeys,
    Slot,
    between_slots,
    bounded,
    common_tokens,
    fill,
    heads,
)

# Dispatches and ends remembered per runner, replayed when the belief about its slots grows:
# 128 requests fill and refill a runner of up to dozens of slots.
HISTORY_EVENTS = 256

# The least recently used slot, the lowest index among equals: `min` keeps the first of equal
# keys and a runner's slots are always in index order (`SlotCache.slots`), so the slot's
# recency alone is the key, read in C (a key function of Python's was a frame and a tuple per
# slot, for every slot of the chosen runner on every request).
_LAST_USED = attrgetter("last_used")


@dataclass(slots=True, eq=False)
class Take:
    """One request's use of a slot: which slot, and how much of its prompt was found there."""

    runner: SlotCache
    keys: PrefixKeys
    slot: Slot | None = None  # None while it waits on the runner's semaphore
    cached: int = 0  # prompt tokens expected to be reused (predicted when it took the slot)
    # The most of the prompt any slot held when it was sent, busy ones included: a slot that
    # frees just before the request reaches the node may serve it instead.
    nearest: int = 0
    done: bool = False
    # What the slot held before, should the request never reach the node.
    previous: tuple[tuple[bytes, ...], tuple[int, ...], int] = ((), (), 0)


@dataclass(frozen=True, slots=True)
class Outsider:
    """What a prompt that shares its first key with no slot finds in a runner: nothing cached,
    no busy slot worth waiting for, and the least recently used idle slot (`victim`, None when
    all are busy), whose first prefix and own history it would push out (`root` and `history`
    tokens, as `SlotCache.displaced` counts them). The same for every such prompt, so it is
    worked out once per change of the slots: most prompts are outsiders to most runners."""

    firsts: frozenset[bytes]  # the first key of what each slot holds
    victim: Slot | None
    root: int
    history: int


# Not frozen: a frozen dataclass is several times slower to make, and two are made per request.
@dataclass(slots=True)
class _Dispatch:
    take: Take
    at: float


@dataclass(slots=True)
class _End:
    take: Take
    answer: int
    served: bool
    at: float


@dataclass(slots=True)
class _Clear:
    keep: Take | None
    busy_too: bool


class SlotCache:
    """The slots of one runner (one model on one node), as the proxy believes them."""

    def __init__(self, slots: int) -> None:
        # In index order, always (slots[i].index == i): `_LAST_USED` relies on it.
        self.slots = [Slot(i) for i in range(max(slots, 1))]
        self.waiting: deque[Take] = deque()  # requests beyond the slots, in arrival order
        self._clock = itertools.count(1)
        self._outsider: Outsider | None = None  # None: the slots changed since it was made
        # What happened to the slots lately, in order, for `resize` to replay on more slots.
        self._history: deque[_Dispatch | _End | _Clear] = deque(maxlen=HISTORY_EVENTS)

    def outsider(self) -> Outsider:
        if self._outsider is None:
            idle = [s for s in self.slots if not s.busy]
            victim = min(idle, key=_LAST_USED) if idle else None
            root, history = self.pushed_out(victim, 0) if victim and victim.tokens else (0, 0)
            self._outsider = Outsider(frozenset(self.first_keys()), victim, root, history)
        return self._outsider

    def resize(self, slots: int, now: float) -> None:
        """The belief about the runner's slot count changed. More slots: the node had them
        while the proxy believed fewer, so they hold what the runner's recent requests would
        have left in them (`_replay`), and requests waiting beyond the old count run in them.
        Fewer: the least recently used idle slots are dropped."""
        self._outsider = None
        slots = max(slots, 1)
        if slots > len(self.slots):
            if not self._replay(slots):
                # Some request in flight is older than the history: add empty slots.
                self.slots += [Slot(i) for i in range(len(self.slots), slots)]
            while self.waiting and self._assign(self.waiting[0], now):
                self.waiting.popleft()
        elif slots < len(self.slots):
            idle = sorted((s for s in self.slots if not s.busy), key=lambda s: s.last_used)
            dropped = {id(s) for s in idle[: len(self.slots) - slots]}
            self.slots = [s for s in self.slots if id(s) not in dropped]
            for index, slot in enumerate(self.slots):
                slot.index = index

    def _replay(self, slots: int) -> bool:
        """Replay the remembered dispatches and ends on `slots` slots (from empty slots: the
        history starts at the runner's creation, or holds enough requests to refill them) and
        take the result as what the slots hold, each request in flight in the slot the replay
        gave it. False, changing nothing, when a request in flight is not in the history."""
        shadow = SlotCache(slots)
        shadow._history = deque(maxlen=0)  # the shadow's own history is never replayed
        flying: dict[int, tuple[Take, Take]] = {}  # id(take) -> the take and its replayed twin
        for event in self._history:
            if isinstance(event, _Dispatch):
                twin = shadow.take(event.take.keys, event.at)
                flying[id(event.take)] = (event.take, twin)
            elif isinstance(event, _End):
                _, twin = flying.pop(id(event.take), (None, None))
                if twin is not None:  # else dispatched before the history starts
                    shadow.release(twin, event.at, event.answer, served=event.served)
            else:
                _, kept = flying.get(id(event.keep), (None, None))
                shadow.clear(kept, busy_too=event.busy_too)
        # Every request in flight (in a slot or waiting) was dispatched within the history.
        if sum(slot.busy for slot in self.slots) + len(self.waiting) != len(flying):
            return False
        for take, twin in flying.values():
            take.slot, take.previous = twin.slot, twin.previous
        live = {id(twin): take for take, twin in flying.values()}
        self.slots, self._clock = shadow.slots, shadow._clock  # the slots' recency with them
        self.waiting = deque(live[id(twin)] for twin in shadow.waiting)
        return True

    def choose(
        self,
        keys: PrefixKeys,
        *,
        busy_too: bool = False,
        keys_only: Sequence[bytes] | None = None,
        found: Sequence[int] | None = None,
    ) -> tuple[Slot | None, int]:
        """The slot llama-server would give this prompt now, and the prompt tokens found in it
        (None when every slot is busy). `busy_too`: as if every slot were idle, i.e. the slot
        the request would get by waiting for it. `found`: `common_tokens` of each slot, in
        order, when the caller counted them already."""
        keys_only = heads(keys) if keys_only is None else keys_only
        best: Slot | None = None
        best_tokens = -1
        for i, slot in enumerate(self.slots):
            if slot.busy and not busy_too:
                continue
            tokens = common_tokens(slot, keys, keys_only) if found is None else found[i]
            if tokens > best_tokens:  # strictly longer: the lowest index wins among equals
                best, best_tokens = slot, tokens
        if best is None:
            return None, 0
        prompt = keys[-1][1] if keys else 0
        if best_tokens <= SLOT_PROMPT_SIMILARITY * prompt:
            best = min((s for s in self.slots if busy_too or not s.busy), key=_LAST_USED)
            best_tokens = (
                common_tokens(best, keys, keys_only) if found is None else found[best.index]
            )
        return best, best_tokens

    def when_full(
        self, keys: PrefixKeys, keys_only: Sequence[bytes] | None = None
    ) -> tuple[Slot, int]:
        """Every slot busy: the slot whose request started first (what the request sent now
        would push out, if it frees first) and the prompt tokens the request can expect to find.
        It takes whichever slot frees first (llama-server gives a waiting request the slot just
        released, whatever it holds), and the oldest request is not always the first to end, so
        the mean over the slots: priced as the oldest slot's, a group holding one slot of two
        drew its requests to a full node, and those the other slot took missed."""
        keys_only = heads(keys) if keys_only is None else keys_only
        held = [common_tokens(slot, keys, keys_only) for slot in self.slots]
        return min(self.slots, key=attrgetter("started")), sum(held) // len(held)

    def busy_holding(
        self, keys: PrefixKeys, keys_only: Sequence[bytes] | None = None
    ) -> tuple[int, int, float]:
        """The busy slots where this prompt would find a prefix worth reusing (more than the
        similarity threshold): the most tokens one of them holds, how many they are, and when
        the oldest request in them started (the first likely to free it)."""
        keys_only = heads(keys) if keys_only is None else keys_only
        threshold = SLOT_PROMPT_SIMILARITY * (keys[-1][1] if keys else 0)
        most, count, since = 0, 0, 0.0
        for slot in self.slots:
            if slot.busy:
                tokens = common_tokens(slot, keys, keys_only)
                if tokens > threshold:
                    since = slot.started if not count else min(since, slot.started)
                    most, count = max(most, tokens), count + 1
        return most, count, since

    def displaced(
        self, victim: Slot, keys: PrefixKeys, keys_only: Sequence[bytes] | None = None
    ) -> tuple[int, int]:
        """What giving `victim` to this prompt pushes out of the runner: the tokens of its
        first prefix (a system prompt, a shared preamble) and of the rest that no other slot
        holds and the new prompt does not keep."""
        if not victim.tokens:
            return 0, 0
        return self.pushed_out(victim, common_tokens(victim, keys, keys_only))

    def pushed_out(self, victim: Slot, kept: int) -> tuple[int, int]:
        """`displaced`, given the tokens of `victim` (which holds a prompt) the new prompt
        keeps: what `choose` found in the slot it names."""
        first = victim.keys[0]
        for slot in self.slots:
            # Only a slot that starts alike shares anything (the common case: it does not).
            if slot is not victim and slot.keys and slot.keys[0] == first:
                kept = max(kept, between_slots(victim, slot))
        root = victim.tokens[0]
        return max(root - kept, 0), victim.held + victim.answer - max(kept, root)

    def take(self, keys: PrefixKeys, now: float) -> Take:
        """A request reaches the runner: it takes the slot `choose` names, or waits for one."""
        keys = bounded(keys)  # the history keeps its takes: a client's body must not stay whole
        keys_only = heads(keys)
        self._outsider = None
        # Each slot's common tokens, counted once: the nearest, then the slot it takes.
        found = [common_tokens(s, keys, keys_only) for s in self.slots]
        take = Take(self, keys, nearest=max(found))
        self._history.append(_Dispatch(take, now))
        if not self._assign(take, now, keys_only, found):
            self.waiting.append(take)
        return take

    def _assign(
        self,
        take: Take,
        now: float,
        keys_only: Sequence[bytes] | None = None,
        found: Sequence[int] | None = None,
    ) -> bool:
        """`keys_only` and `found`: as `choose` takes them, when the caller has them."""
        slot, tokens = self.choose(take.keys, keys_only=keys_only, found=found)
        if slot is None:
            return False
        prompt = take.keys[-1][1] if take.keys else 0
        slot.busy, slot.started = True, now
        take.slot, take.cached = slot, max(0, min(tokens, prompt - 1))
        take.previous = (slot.keys, slot.tokens, slot.answer)
        # From now on the slot holds this prompt (llama-server keeps the common prefix and
        # evaluates the rest into it): what a request waiting for this slot will find.
        fill(slot, take.keys, 0)
        return True

    def release(self, take: Take, now: float, answer: int = 0, *, served: bool = True) -> None:
        """The request left its slot. `served`: its prompt reached the slot (it now holds that
        prompt and `answer` tokens after it); otherwise the slot keeps what it held."""
        if take.done:
            return
        take.done = True
        self._outsider = None
        slot = take.slot
        # `served` as the caller says even for a request that never got one of the believed
        # slots: it ran in one the proxy did not know of, which a replay on more slots gives it.
        self._history.append(_End(take, answer, served, now))
        if slot is None:
            if take in self.waiting:
                self.waiting.remove(take)
            return
        slot.busy = False
        if served:
            fill(slot, take.keys, answer)
            slot.last_used, slot.ended = next(self._clock), now
        else:
            slot.keys, slot.tokens, slot.answer = take.previous
        while self.waiting and self._assign(self.waiting[0], now):
            self.waiting.popleft()

    def first_keys(self) -> set[bytes]:
        """The first prefix key of what each slot holds (a system prompt, a preamble)."""
        return {slot.keys[0] for slot in self.slots if slot.keys}

    def clear(self, keep: Take | None = None, *, busy_too: bool = False) -> None:
        """Forget what the slots hold (the runner lost its cache), but the slot of `keep` and,
        unless `busy_too`, the busy ones (their requests fill them when they end)."""
        self._outsider = None
        self._history.append(_Clear(keep, busy_too))
        kept = None if keep is None else keep.slot
        for slot in self.slots:
            if slot is not kept and (busy_too or not slot.busy):
                slot.keys, slot.tokens, slot.answer = (), (), 0
