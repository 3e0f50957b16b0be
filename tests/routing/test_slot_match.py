"""What a prompt finds in one slot, by prefix keys: common prefixes, the answer band, bounds."""

from __future__ import annotations

from sollol_proxy.routing.slot_match import (
    MAX_KEYS,
    Slot,
    between_slots,
    bounded,
    common_keys,
    common_tokens,
    fill,
)


def keys(*names: str, step: int = 100) -> tuple[tuple[bytes, int], ...]:
    """Chained keys: each names everything before it, so a key is its whole prefix."""
    return tuple(("/".join(names[: i + 1]).encode(), step * (i + 1)) for i in range(len(names)))


def test_the_common_prefix_is_counted_in_whole_keys() -> None:
    held = [k for k, _ in keys("sys", "q1", "a1", "q2")]
    assert common_keys(held, [k for k, _ in keys("sys", "q1", "a1", "q3")]) == 3
    assert common_keys(held, [k for k, _ in keys("sys", "other")]) == 1
    assert common_keys(held, [k for k, _ in keys("else")]) == 0
    assert common_keys(held, held) == 4


def test_a_slot_credits_its_answer_only_to_a_turn_of_about_its_length() -> None:
    slot = Slot(0)
    fill(slot, keys("sys", "q1"), answer=100)
    # The next message (the answer sent back) is 100 tokens plus the role header: credited.
    assert common_tokens(slot, keys("sys", "q1", "a1", "q2")) == 300
    slot.answer = 10  # a short answer, a long next message: not the answer sent back
    assert common_tokens(slot, keys("sys", "q1", "a1", "q2")) == 200
    assert common_tokens(slot, keys("other", "q1")) == 0


def test_two_slots_share_what_their_prompts_share() -> None:
    a, b = Slot(0), Slot(1)
    fill(a, keys("sys", "q1"), answer=0)
    fill(b, keys("sys", "q2"), answer=0)
    assert between_slots(a, b) == 100


def test_a_huge_prompt_keeps_its_first_keys_and_its_last() -> None:
    huge = keys(*(str(i) for i in range(MAX_KEYS + 10)), step=1)
    kept = bounded(huge)
    assert len(kept) == MAX_KEYS + 1 and kept[-1] == huge[-1]
    slot = Slot(0)
    fill(slot, huge, answer=7)
    assert len(slot.keys) == MAX_KEYS and slot.answer == 0  # never continued past what it keeps
