"""Prompt-cache affinity: which node still holds a conversation's prefix."""

from __future__ import annotations

from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.routing.analysis import analyze


def chat(*contents: str):  # type: ignore[no-untyped-def]
    roles = ["system"] + ["user", "assistant"] * len(contents)
    messages = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=False)]
    return analyze("/api/chat", {"model": "m", "messages": messages}, "m", True).prefix_keys


SYSTEM = "You are a careful assistant. " * 50


def test_the_node_that_served_a_conversation_holds_its_prefix() -> None:
    cache = PromptCache()
    first = chat(SYSTEM, "hello")
    cache.record("m", "a", first)
    follow_up = chat(SYSTEM, "hello", "hi there", "and then?")
    found = cache.cached_tokens("m", follow_up, {"a": 1, "b": 1})
    assert found == {"a": first[-1][1]}  # up to the longest prefix `a` saw
    assert cache.cached_tokens("other-model", follow_up, {"a": 1}) == {}


def test_a_slot_is_overwritten_by_another_conversation() -> None:
    cache = PromptCache()
    cache.record("m", "a", chat("system one", "question one"))
    cache.record("m", "a", chat("system two", "question two"))
    # One slot: the second conversation took it.
    assert cache.cached_tokens("m", chat("system one", "question one"), {"a": 1}) == {}
    # Two slots: both are kept.
    assert cache.cached_tokens("m", chat("system one", "question one"), {"a": 2}) != {}


def test_an_unload_forgets_everything_on_that_node() -> None:
    cache = PromptCache()
    keys = chat(SYSTEM, "hello")
    cache.record("m", "a", keys)
    cache.record("m", "b", keys)
    cache.forget("a", ["m"])
    assert set(cache.cached_tokens("m", keys, {"a": 1, "b": 1})) == {"b"}
    cache.record("m", "a", keys)  # served again after the reload: cached again
    assert set(cache.cached_tokens("m", keys, {"a": 1, "b": 1})) == {"a", "b"}


def test_memory_is_bounded() -> None:
    cache = PromptCache(max_entries=50)
    for i in range(100):
        cache.record("m", "a", chat(f"system {i}", "q"))
    assert len(cache) == 50
    assert cache.cached_tokens("m", chat("system 99", "q"), {"a": 1000}) != {}
    assert cache.cached_tokens("m", chat("system 0", "q"), {"a": 1000}) == {}


def test_a_conversation_reusing_its_slot_does_not_push_others_out() -> None:
    cache = PromptCache()
    a1, b1 = chat(SYSTEM, "from a"), chat(SYSTEM + " b", "from b")
    b2 = chat(SYSTEM + " b", "from b", "answer", "more from b")
    cache.record("m", "n", a1, new_slot=True)
    cache.record("m", "n", b1, new_slot=True)
    cache.record("m", "n", b2, new_slot=False)  # b's follow-up found its prefix: same slot
    assert cache.cached_tokens("m", a1, {"n": 2}) == {"n": a1[-1][1]}
    cache.record("m", "n", chat("third", "conversation"), new_slot=True)
    assert cache.cached_tokens("m", a1, {"n": 2}) == {}  # now two others took slots since
