"""What each node's slots hold: found by later requests, pushed out, forgotten, and scored."""

from __future__ import annotations

from sollol_proxy.fleet.prompt_cache import PromptCache, Rounds
from sollol_proxy.fleet.reservations import RESERVATION_S
from sollol_proxy.routing.analysis import analyze
from sollol_proxy.routing.slot_match import MAX_KEYS


def chat(*contents: str):  # type: ignore[no-untyped-def]
    roles = ["system"] + ["user", "assistant"] * len(contents)
    messages = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=False)]
    return analyze("/api/chat", {"model": "m", "messages": messages}, "m", True).prefix_keys


def cached(cache: PromptCache, keys, slots: dict[str, int], model: str = "m") -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {
        node: probe.cached
        for node, probe in cache.probe(model, keys, slots).items()
        if probe.cached
    }


SYSTEM = "You are a careful assistant. " * 50


def test_the_node_that_served_a_conversation_holds_its_prefix() -> None:
    cache = PromptCache()
    first = chat(SYSTEM, "hello")
    cache.record("m", "a", first)
    follow_up = chat(SYSTEM, "hello", "hi there", "and then?")
    assert cached(cache, follow_up, {"a": 1, "b": 1}) == {"a": first[-1][1]}
    assert cached(cache, follow_up, {"a": 1}, model="other-model") == {}


def test_a_slot_is_overwritten_by_another_conversation() -> None:
    # Slots are fixed when a runner loads (reference 5.1): one cache per slot count.
    one, two = PromptCache(), PromptCache()
    for cache, slots in ((one, 1), (two, 2)):
        cache.record("m", "a", chat("system one", "question one"), slots)
        cache.record("m", "a", chat("system two", "question two"), slots)
    # One slot: the second conversation took it.
    assert cached(one, chat("system one", "question one"), {"a": 1}) == {}
    # Two slots: both are kept.
    assert cached(two, chat("system one", "question one"), {"a": 2}) != {}


def test_an_unload_forgets_everything_on_that_node() -> None:
    cache = PromptCache()
    keys = chat(SYSTEM, "hello")
    cache.record("m", "a", keys)
    cache.record("m", "b", keys)
    cache.forget("a", ["m"])
    assert set(cached(cache, keys, {"a": 1, "b": 1})) == {"b"}
    cache.record("m", "a", keys)  # served again after the reload: cached again
    assert set(cached(cache, keys, {"a": 1, "b": 1})) == {"a", "b"}


def test_memory_is_bounded() -> None:
    cache = PromptCache(max_roots=50)
    for i in range(100):
        cache.record("m", "a", chat(f"system {i}", "q"), slots=4)
    assert len(cache.demand) == 50
    assert cached(cache, chat("system 99", "q"), {"a": 4}) != {}
    assert cached(cache, chat("system 0", "q"), {"a": 4}) == {}
    long = analyze(
        "/api/chat",
        {"model": "m", "messages": [{"role": "user", "content": "x"}] * (3 * MAX_KEYS)},
        "m",
        True,
    ).prefix_keys
    cache.record("m", "a", long, slots=4)
    assert max(len(slot.keys) for slot in cache.slots("a", "m")) == MAX_KEYS


def test_a_conversation_reusing_its_slot_does_not_push_others_out() -> None:
    cache = PromptCache()
    a1, b1 = chat(SYSTEM, "from a"), chat(SYSTEM + " b", "from b")
    b2 = chat(SYSTEM + " b", "from b", "answer", "more from b")
    cache.record("m", "n", a1, slots=2)
    cache.record("m", "n", b1, slots=2)
    cache.record("m", "n", b2, slots=2)  # b's follow-up found its prefix: same slot
    assert cached(cache, a1, {"n": 2}) == {"n": a1[-1][1]}
    cache.record("m", "n", chat("third", "conversation"), slots=2)
    assert cached(cache, a1, {"n": 2}) == {}  # now two others took slots since


def test_a_shared_system_prompt_counts_for_every_conversation() -> None:
    cache = PromptCache()
    cache.record("m", "a", chat(SYSTEM, "from the first user"), slots=2)
    newcomer = chat(SYSTEM, "from a new user")
    assert cached(cache, newcomer, {"a": 2, "b": 2}) == {"a": newcomer[0][1]}


def test_a_busy_slot_is_found_by_waiting_for_it() -> None:
    cache = PromptCache()
    ticket = cache.take("a", "m", chat(SYSTEM, "first"), slots=1, now=10.0)
    assert ticket is not None
    probe = cache.probe("m", chat(SYSTEM, "second"), {"a": 1})["a"]
    assert probe.waiting_cached == chat(SYSTEM)[0][1] and probe.waiting_since == 10.0
    # Sent there now, it would wait on the node for the first slot to free, this one.
    assert probe.full_since == 10.0 and probe.cached == chat(SYSTEM)[0][1]
    cache.finish(ticket)
    probe = cache.probe("m", chat(SYSTEM, "second"), {"a": 1})["a"]
    assert probe.cached == chat(SYSTEM)[0][1] and probe.waiting_cached == 0


def test_pushing_out_a_popular_shared_prefix_costs_more_than_a_rare_one() -> None:
    cache = PromptCache()
    popular, rare = "popular team " * 80, "rare team " * 80
    for i in range(30):  # requests of the popular team, served on node b
        cache.record("m", "b", chat(popular, f"question {i}"), slots=1)
    cache.record("m", "a", chat(popular, "here too"), slots=1)
    cache.record("m", "c", chat(rare, "once"), slots=1)
    probes = cache.probe("m", chat("a third team " * 80, "hello"), {"a": 1, "b": 1, "c": 1})
    # a and b both hold the popular prefix: each copy is worth half of it; c's is rarely asked for
    assert probes["a"].displaced == probes["b"].displaced > probes["c"].displaced > 0
    # Probing only some nodes (the selector prices only its top) finds the same on them: a
    # copy's worth still counts every node given.
    only = cache.probe(
        "m", chat("a third team " * 80, "hello"), {"a": 1, "b": 1, "c": 1}, only=["a"]
    )
    assert only == {"a": probes["a"]}
    rounds, keys = Rounds(), chat("a third team " * 80, "hello")
    first = cache.probe("m", keys, {"a": 1, "b": 1, "c": 1}, only=["c"], rounds=rounds)
    second = cache.probe("m", keys, {"a": 1, "b": 1, "c": 1}, only=["a", "b"], rounds=rounds)
    assert {**first, **second} == probes and rounds.copies is not None


def test_the_truth_scores_the_prediction_and_a_false_hit_clears_the_runner() -> None:
    cache = PromptCache()
    cache.record("m", "a", chat(SYSTEM, "one"), slots=2)
    cache.record("m", "a", chat("other system " * 80, "two"), slots=2)
    ticket = cache.take("a", "m", chat(SYSTEM, "three"), slots=2)
    assert ticket is not None and ticket.take.cached > 0  # predicted: the system prompt
    prompt = chat(SYSTEM, "three")[-1][1]
    cache.finish(ticket, prompt_count=prompt, observed=3)  # the node evaluated nearly all of it
    score = cache.accuracy[("a", "m")].to_json()
    assert score["requests"] == 1 and score["predicted_hit_ratio"] == 1.0
    assert score["observed_hit_ratio"] == 0.0 and score["agreement"] == 0.0
    # The node had lost its cache: the other slot's prefix is not believed any more.
    assert cached(cache, chat("other system " * 80, "two"), {"a": 2}) == {}
    assert cached(cache, chat(SYSTEM, "four"), {"a": 2}) != {}  # what this request left there


def test_a_slot_reserved_when_the_node_was_chosen_is_claimed_by_the_dispatch() -> None:
    cache = PromptCache()
    keys = chat(SYSTEM, "first")
    cache.record("m", "a", keys, slots=2)
    follow_up = chat(SYSTEM, "second")
    cache.reserve("a", "m", follow_up, 2, now=0.0)
    # Ranked meanwhile: that slot is taken, the other one is empty.
    assert cached(cache, chat(SYSTEM, "third"), {"a": 2}) == {}
    ticket = cache.take("a", "m", follow_up, 2, now=0.1)
    assert ticket is not None and ticket.take.cached == keys[0][1]
    assert sum(slot.busy for slot in cache.slots("a", "m")) == 1  # the same slot, not another
    cache.finish(ticket)
    # A reservation its request never claims (the client left) is given back.
    cache.reserve("a", "m", chat(SYSTEM, "gone"), 2, now=1.0)
    cache.reserve("a", "m", chat(SYSTEM, "later"), 2, now=1.0 + RESERVATION_S)
    assert sum(slot.busy for slot in cache.slots("a", "m")) == 1
    # A failover: the request went to another node; the reservation on the first is released.
    moved = chat(SYSTEM, "moved")
    cache.reserve("b", "m", moved, 2)
    assert cache.take("c", "m", moved, 2) is not None
    assert not any(slot.busy for slot in cache.slots("b", "m"))


def test_a_request_that_chooses_again_keeps_one_reservation() -> None:
    # With replicas sharing slots in Redis, a request refused there is given a node again: a
    # second reservation with the same keys object. The first one, overwritten, was never
    # given back: a slot busy for good on that node.
    cache = PromptCache()
    keys = chat(SYSTEM, "asked twice")
    cache.reserve("a", "m", keys, 2, now=0.0)
    cache.reserve("b", "m", keys, 2, now=0.1)
    ticket = cache.take("b", "m", keys, 2, now=0.2)
    assert ticket is not None
    cache.finish(ticket, now=0.3)
    cache.reserve("c", "m", chat(SYSTEM, "later"), 2, now=RESERVATION_S + 1.0)  # expiries run
    assert not any(slot.busy for node in "ab" for slot in cache.slots(node, "m"))


def test_reservations_run_out_oldest_first_and_claimed_ones_are_passed_over() -> None:
    cache = PromptCache()
    first, claimed, last = (chat(SYSTEM, word) for word in ("one", "two", "three"))
    for at, keys in enumerate((first, claimed, last)):
        cache.reserve("a", "m", keys, 8, now=float(at))
    assert cache.take("a", "m", claimed, 8, now=1.5) is not None  # still busy: its request runs
    assert sum(slot.busy for slot in cache.slots("a", "m")) == 3
    # The first has run out, the claimed one is its request's, the last one has not run out.
    cache.reserve("a", "m", chat(SYSTEM, "four"), 8, now=RESERVATION_S + 1.5)
    assert sum(slot.busy for slot in cache.slots("a", "m")) == 3
    ticket = cache.take("a", "m", last, 8, now=RESERVATION_S + 1.6)
    assert ticket is not None and ticket.take.slot is not None and ticket.take.slot.busy


def test_a_conversations_own_history_is_worth_keeping_while_it_may_come_back() -> None:
    cache = PromptCache()
    question, answer = "pasted document. " * 300, "an answer"
    first = cache.take("a", "m", chat("system one", question), 1, now=0.0)
    assert first is not None
    cache.finish(first, now=1.0)
    # Its follow-up came 3 s later: the proxy learns how long conversations think.
    follow_up = cache.take("a", "m", chat("system one", question, answer, "and then?"), 1, now=4.0)
    assert follow_up is not None
    cache.finish(follow_up, now=5.0)
    newcomer = chat("system two", "hello")

    def displaced(at: float) -> float:
        return cache.probe("m", newcomer, {"a": 1}, now=at)["a"].displaced

    # Pushing out a conversation that was just here costs about half its history; one whose
    # follow-up would be long overdue, only its system prompt (the only one ever asked for).
    root = chat("system one")[0][1]
    assert 0.4 * 1300 < displaced(5.0) - root < 0.6 * 1300
    assert displaced(5.0 + 3.0) - root < 0.4 * (displaced(5.0) - root)
    assert displaced(5.0 + 30.0) < root + 1


def test_a_prefix_shared_by_a_third_of_few_requests_is_worth_its_whole_length() -> None:
    """Early in a run (far fewer requests than the demand counters remember), a prefix asked for
    by one request in three, on a fleet of six slots, is as valuable as it is after many: it is
    asked for about twice per round of the slots, so losing its only copy costs all its tokens."""
    cache = PromptCache()
    teams = ["first team " * 80, "second team " * 80, "third team " * 80]
    for i in range(6):  # six requests: two per team, the third team's on node c
        cache.record("m", "c" if i % 3 == 2 else "b", chat(teams[i % 3], f"question {i}"), slots=1)
    probe = cache.probe("m", chat(teams[0], "again"), {"b": 1, "c": 1, "d": 4})["c"]
    assert probe.cached == 0
    assert probe.displaced == chat(teams[2])[0][1]


def test_a_full_node_is_priced_by_the_slot_that_frees_first() -> None:
    """Every believed slot is busy: a request sent there now takes the slot whose request
    started first, and pushes out what that slot holds (a group's only copy)."""
    cache = PromptCache()
    teams = ["first team " * 80, "second team " * 80]
    older = cache.take("a", "m", chat(teams[0], "old"), slots=2, now=1.0)
    newer = cache.take("a", "m", chat(teams[1], "new"), slots=2, now=2.0)
    assert older is not None and newer is not None
    probe = cache.probe("m", chat("third team " * 80, "hi"), {"a": 2}, now=3.0)["a"]
    assert probe.full_since == 1.0 and probe.cached == 0
    # Half the requests on a fleet of two slots: worth about all its tokens.
    assert 0.95 * chat(teams[0])[0][1] < probe.displaced <= chat(teams[0])[0][1]


def test_a_belief_that_drops_does_not_forget_what_the_slots_hold() -> None:
    cache = PromptCache()
    for team in ("first team " * 80, "second team " * 80):
        cache.record("m", "a", chat(team, "hello"), slots=2)
    # The slot belief fell to one (a wait another client caused): the runner still has both.
    found = cached(cache, chat("first team " * 80, "again"), {"a": 1})
    assert found == {"a": chat("first team " * 80)[0][1]}
    assert len(cache.slots("a", "m")) == 2


def test_a_belief_that_grows_finds_what_the_slots_it_did_not_know_of_hold() -> None:
    """Zero configuration: the node has two slots while the proxy believes one. Two teams'
    requests ran there at once (admission lets more in while it probes), so the node holds
    both teams' prompts, where a one-slot model kept only the later one. Once the belief is
    two, a probe finds both, and the request the model had waiting runs in the second slot."""
    cache = PromptCache()
    teams = ["first team " * 80, "second team " * 80, "third team " * 80]
    first = cache.take("a", "m", chat(teams[0], "one"), slots=1, now=1.0)
    second = cache.take("a", "m", chat(teams[1], "two"), slots=1, now=1.1)
    assert first is not None and second is not None
    cache.finish(first, now=1.5)
    cache.finish(second, now=1.6)
    assert cached(cache, chat(teams[0], "again"), {"a": 1}) == {}  # one slot: pushed out
    assert cached(cache, chat(teams[0], "again"), {"a": 2}) == {"a": chat(teams[0])[0][1]}
    assert cached(cache, chat(teams[1], "again"), {"a": 2}) == {"a": chat(teams[1])[0][1]}
    # A request beyond the believed slot waits in the model until the belief grows.
    running = cache.take("b", "m", chat(teams[0], "one"), slots=1, now=2.0)
    waiting = cache.take("b", "m", chat(teams[2], "three"), slots=1, now=2.1)
    assert running is not None and waiting is not None and waiting.take.slot is None
    probe = cache.probe("m", chat(teams[1], "hi"), {"b": 2}, now=2.2)["b"]
    assert waiting.take.slot is not None and probe.full_since == 2.0


def test_a_warm_up_fills_a_slot_without_counting_as_demand_and_changes_are_told() -> None:
    cache = PromptCache()
    told: list[str] = []
    cache.listener = told.append
    keys = chat(SYSTEM, "hello")
    ticket = cache.take("a", "m", keys[:1], 1, counted=False)
    assert ticket is not None and told == ["m"]
    cache.finish(ticket)  # its one token is no turn of the group's: no answer to continue
    assert told == ["m", "m"]
    # The slot holds the system prompt; no request of the group was counted for it.
    assert cached(cache, keys, {"a": 1}) == {"a": keys[0][1]}
    assert cache.demand.worth("m", keys[0][0], 1, 1) == 0.0
    cache.record("m", "b", keys)
    assert cache.demand.worth("m", keys[0][0], 1, 1) > 0.0
