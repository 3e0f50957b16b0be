"""The slot-cache model against the simulator's own slot choice (llama-server's rule, §5.7).

The same request sequences go through the simulator's `PrefixCache` (rendered text, characters)
and through `SlotCache` (prefix keys from the request analysis): both must put every request in
the same slot and agree on whether it reuses a cached prefix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from sollol_proxy.routing.analysis import analyze
from sollol_proxy.routing.slot_cache import HISTORY_EVENTS, SlotCache, Take
from sollol_proxy.routing.slot_match import MAX_KEYS, SLOT_PROMPT_SIMILARITY
from sollol_proxy.simulator.kvcache import ASSISTANT_TAG, PrefixCache, render_chat, token_count
from sollol_proxy.simulator.text import tokens_for

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "kernel",
    "slot",
    "cache",
    "prefix",
    "token",
    "router",
    "fleet",
    "queue",
]


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def keys_of(messages: list[dict[str, str]]) -> tuple[tuple[bytes, int], ...]:
    return analyze("/api/chat", {"model": "m", "messages": messages}, "m", True).prefix_keys


@dataclass
class Conversation:
    messages: list[dict[str, str]] = field(default_factory=list)
    busy: bool = False


@dataclass
class InFlight:
    conversation: Conversation
    messages: list[dict[str, str]]
    prompt: str
    sim_slot: object
    take: Take
    answer: str


def run_sequence(
    seed: int, slots: int, steps: int, believed: int | None = None, grow_at: int = 0
) -> tuple[int, int]:
    """Random arrivals and completions (never more in flight than slots, as the runner's
    semaphore ensures); returns (requests, requests that reused a prefix). `believed`: the
    model starts with that many slots (requests beyond them wait in it while the node runs
    them) and learns the node's count at step `grow_at`; slots are compared from then on."""
    rng = random.Random(seed)
    sim, model = PrefixCache(slots), SlotCache(slots if believed is None else believed)
    systems = [chr(0x4E00 + g) + text(rng, 300) for g in range(3)]
    conversations = []
    for c in range(4 * slots):
        first = chr(0x5E00 + c)  # distinct first characters: no accidental common prefix
        system = rng.choice([*systems, ""])
        conv = Conversation([{"role": "system", "content": system}] if system else [])
        # Without a system prompt, a long first question: every rendered prompt starts with the
        # same role tag, which the keys do not see, and for a prompt of a few dozen tokens that
        # tag alone is above the similarity threshold (see slot_cache's docstring).
        words = rng.randint(5, 40) if system else rng.randint(60, 90)
        conv.messages.append({"role": "user", "content": first + text(rng, words)})
        conversations.append(conv)
    flying: list[InFlight] = []
    requests = reused = 0
    for step in range(steps):
        if step == grow_at and len(model.slots) < slots:
            model.resize(slots, now=float(step))
            for done in flying:  # every request in flight runs in the slot the node gave it
                assert done.take.slot is not None
                assert done.take.slot.index == done.sim_slot.index, f"step {step}"  # type: ignore[attr-defined]
        compared = step >= grow_at
        idle = [c for c in conversations if not c.busy]
        if idle and len(flying) < slots and (not flying or rng.random() < 0.55):
            conv = rng.choice(idle)
            conv.busy = True
            prompt = render_chat(conv.messages)
            sim_slot, sim_cached = sim.take(prompt)
            take = model.take(keys_of(conv.messages), now=float(step))
            sim_hit = sim_cached > SLOT_PROMPT_SIMILARITY * token_count(prompt)
            if compared:
                assert take.slot is not None
                assert take.slot.index == sim_slot.index, f"step {step}: slot differs"
                model_hit = take.cached > SLOT_PROMPT_SIMILARITY * take.keys[-1][1]
                assert sim_hit == model_hit, f"step {step}: hit {sim_hit} vs {model_hit}"
            requests += 1
            reused += sim_hit
            answer = "".join(tokens_for(prompt, rng.randint(3, 30)))
            flying.append(InFlight(conv, list(conv.messages), prompt, sim_slot, take, answer))
        elif flying:
            done = flying.pop(rng.randrange(len(flying)))
            sim.give_back(done.sim_slot, done.prompt + ASSISTANT_TAG + done.answer + "\n")  # type: ignore[arg-type]
            model.release(done.take, float(step), answer=len(done.answer.split()))
            conv = done.conversation
            conv.busy = False
            conv.messages.append({"role": "assistant", "content": done.answer})
            conv.messages.append({"role": "user", "content": text(rng, rng.randint(3, 30))})
            if len(conv.messages) > 12:  # a new conversation of the same kind
                del conv.messages[1 if conv.messages[0]["role"] == "system" else 0 :]
                first = chr(0x6E00 + step)
                words = 20 if conv.messages else 70
                conv.messages.append({"role": "user", "content": first + text(rng, words)})
    held = [s.last_used for s in sim.slots], [s.last_used for s in model.slots]
    assert [bool(u) for u in held[0]] == [bool(u) for u in held[1]]
    return requests, reused


@pytest.mark.parametrize("slots", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_same_slot_as_the_simulator(seed: int, slots: int) -> None:
    requests, reused = run_sequence(seed, slots, steps=400)
    assert requests > 150 and 0 < reused < requests  # both hits and misses were exercised


@pytest.mark.parametrize(("believed", "slots"), [(1, 2), (1, 4), (2, 3)])
@pytest.mark.parametrize("seed", range(6))
def test_slots_learned_late_hold_what_the_node_put_in_them(
    seed: int, believed: int, slots: int
) -> None:
    """Zero configuration: the proxy believes fewer slots than the node has while it sends
    requests (HISTORY_EVENTS covers them), then learns the count. From then on the model puts
    every request where the simulator does, as if it had known the count from the start: the
    slots it did not know of hold what the node left in them, not nothing."""
    requests, reused = run_sequence(seed, slots, steps=360, believed=believed, grow_at=120)
    assert 0 < reused < requests


def test_slots_learned_after_a_long_history_start_from_the_recent_requests() -> None:
    """Past HISTORY_EVENTS the replay starts from empty slots some way back: what came before
    is lost, but the 128 requests it replays refill every slot, so a model that learns the
    count late holds what one told it from the start holds."""
    rng = random.Random(5)
    systems = [f"team {i} " * 60 for i in range(3)]
    told, learned = SlotCache(3), SlotCache(1)
    for step in range(2 * HISTORY_EVENTS):
        keys = chat(systems[step % 3] if step % 5 else f"alone {step} " * 60, f"q{step}")
        answer = rng.randint(5, 20)
        for cache in (told, learned):
            cache.release(cache.take(keys, now=step), now=step, answer=answer)
    learned.resize(3, now=1e6)
    assert [(s.keys, s.answer) for s in learned.slots] == [(s.keys, s.answer) for s in told.slots]
    # The same order of recency (the replay's clock counts only the requests it replayed).
    order = [sorted(c.slots, key=lambda s: s.last_used) for c in (learned, told)]
    assert [s.index for s in order[0]] == [s.index for s in order[1]]


def chat(*contents: str) -> tuple[tuple[bytes, int], ...]:
    roles = ["system"] + ["user", "assistant"] * len(contents)
    return keys_of([{"role": r, "content": c} for r, c in zip(roles, contents, strict=False)])


SYSTEM = "You are a careful assistant. " * 50


def test_a_shared_system_prompt_is_found_by_every_conversation_that_starts_with_it() -> None:
    cache = SlotCache(2)
    first = cache.take(chat(SYSTEM, "from one user"), now=0)
    cache.release(first, now=1, answer=10)
    other = chat(SYSTEM, "from another user")
    slot, tokens = cache.choose(other)
    assert slot is first.slot and tokens == other[0][1]  # the system prompt, not the question


def test_the_answer_counts_when_the_client_sends_it_back() -> None:
    cache = SlotCache(1)
    answer = "word " * 40  # about 50 tokens by the proxy's estimate
    take = cache.take(chat(SYSTEM, "question"), now=0)
    cache.release(take, now=1, answer=45)
    echoed = chat(SYSTEM, "question", answer, "next")
    assert cache.choose(echoed)[1] == echoed[2][1]  # through the answer
    rewritten = chat(SYSTEM, "question", "an answer", "next")
    assert cache.choose(rewritten)[1] == rewritten[1][1]  # up to the question only


def test_a_busy_slot_is_not_chosen_and_a_request_beyond_the_slots_waits() -> None:
    cache = SlotCache(1)
    first = cache.take(chat(SYSTEM, "a"), now=0)
    second = cache.take(chat(SYSTEM, "b"), now=0)
    assert second.slot is None and cache.choose(chat(SYSTEM, "c")) == (None, 0)
    assert cache.choose(chat(SYSTEM, "c"), busy_too=True)[0] is first.slot
    cache.release(first, now=1)
    assert second.slot is first.slot and second.cached == chat(SYSTEM)[0][1]


def test_what_a_slot_would_push_out() -> None:
    cache = SlotCache(2)
    for i, system in enumerate(("first team " * 100, "second team " * 100)):
        cache.release(cache.take(chat(system, f"question {i}"), now=i), now=i)
    newcomer = chat("third team " * 100, "hello")
    victim, _ = cache.choose(newcomer)  # the least recently used: the first team's
    assert victim is cache.slots[0]
    root, rest = cache.displaced(victim, newcomer)
    assert root == victim.tokens[0] and rest == victim.held - root
    # Two of the first team's users at once: the second takes the other slot, and now both
    # hold the team's system prompt, so losing one copy loses only that user's question.
    one = cache.take(chat("first team " * 100, "one"), now=5)
    two = cache.take(chat("first team " * 100, "two"), now=5)
    assert (one.slot, two.slot) == (cache.slots[0], cache.slots[1])
    cache.release(one, now=6)
    cache.release(two, now=7)
    root, rest = cache.displaced(cache.slots[0], newcomer)
    assert root == 0 and rest == cache.slots[0].held - cache.slots[0].tokens[0]


def test_resize_keeps_the_most_recently_used_slots() -> None:
    cache = SlotCache(3)
    for i in range(3):
        cache.release(cache.take(chat(f"system {i} " * 50, "q"), now=i), now=i)
    cache.resize(2, now=9)
    assert [s.index for s in cache.slots] == [0, 1]
    assert cache.choose(chat("system 0 " * 50, "q"))[1] == 0 or cache.slots[0].last_used > 1
    cache.resize(4, now=9)
    assert len(cache.slots) == 4 and not cache.slots[3].keys


def test_an_outsider_finds_what_choose_and_displaced_say_after_any_change() -> None:
    """The summary for prompts sharing no first key with any slot (made once per change of
    the slots) is what the slot-by-slot rules give for such a prompt."""
    rng = random.Random(11)
    cache = SlotCache(3)
    systems = [f"team {i} " * 60 for i in range(4)]
    takes: list[Take] = []
    for step in range(300):
        kind = rng.randrange(5)
        if kind <= 1:
            takes.append(cache.take(chat(rng.choice(systems), f"q{step}"), now=step))
        elif kind == 2 and takes:
            served = rng.random() < 0.8
            cache.release(takes.pop(rng.randrange(len(takes))), now=step, answer=5, served=served)
        elif kind == 3:
            cache.resize(rng.randint(1, 4), now=step)
        elif rng.random() < 0.2:
            cache.clear(busy_too=rng.random() < 0.5)
        # In index order whatever happened (resizes both ways, replays): the least recently
        # used slot is then the first of the least recent, the lowest index among equals.
        assert [s.index for s in cache.slots] == list(range(len(cache.slots))), step
        outsider = cache.outsider()
        stranger = chat(f"stranger {step} " * 60, "hello")
        victim, tokens = cache.choose(stranger)
        assert outsider.victim is victim and tokens == 0, step
        assert outsider.firsts == cache.first_keys()
        if victim is not None and victim.tokens:
            assert (outsider.root, outsider.history) == cache.displaced(victim, stranger)
        assert cache.busy_holding(stranger) == (0, 0, 0.0)


def test_a_take_keeps_a_bounded_part_of_a_huge_prompt() -> None:
    # The runner's history keeps its takes for a replay: a hostile body of countless messages
    # must not stay in memory whole, while what a slot holds and the turn's last key stay right.
    keys = tuple((i.to_bytes(16, "big"), 10 * (i + 1)) for i in range(5 * MAX_KEYS))
    runner = SlotCache(2)
    take = runner.take(keys, 0.0)
    assert len(take.keys) == MAX_KEYS + 1
    assert take.keys[:MAX_KEYS] == keys[:MAX_KEYS] and take.keys[-1] == keys[-1]
    runner.release(take, 1.0, answer=5)
    assert take.slot is not None and len(take.slot.keys) == MAX_KEYS
    assert take.slot.answer == 0  # a prompt longer than a slot keeps is not continued
    again = runner.take(keys, 2.0)
    assert again.slot is take.slot and again.cached == keys[MAX_KEYS - 1][1]


def test_a_full_runner_offers_the_mean_of_what_its_slots_hold() -> None:
    """Every slot busy: a request sent now takes whichever frees first, so it can expect the
    mean of what they hold, and would push out the oldest request's slot if that frees first."""
    cache = SlotCache(2)
    team, other = "team prompt " * 80, "other team " * 80
    older = cache.take(chat(team, "first"), now=1.0)
    cache.take(chat(other, "second"), now=2.0)
    asked = chat(team, "third")
    slot, tokens = cache.when_full(asked)
    assert slot is older.slot and tokens == asked[0][1] // 2
    assert cache.when_full(chat("nobody's prompt " * 80, "q"))[1] == 0
