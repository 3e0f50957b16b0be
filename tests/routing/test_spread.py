"""An early copy of a group's shared prefix (routing/spread.py). Pure: no event loop."""

from __future__ import annotations

from dataclasses import replace

from sollol_proxy.routing import NodeView, RouteRequest, make_strategy
from sollol_proxy.routing.spread import Copies, early_copy

ROOT = 2500  # the group's system prompt
# A conversation's first turn: the system prompt and a short question.
FIRST = RouteRequest(model="m", request_id="r", prompt_tokens=2560, expected_output=30)
BASE = NodeView(
    name="base",
    in_flight=0,
    num_parallel=2,
    resident=True,
    prefill_tps=6000,
    decode_tps=250,
    service_s=0.3,
)
# The node holding the group's prompt in an idle slot (its other slot runs another request of
# the group), and two free nodes that hold other things.
HOME = replace(BASE, name="home", cached_tokens=2500, in_flight=1, model_in_flight=1)
SPARE = replace(BASE, name="spare", displaced_tokens=600)  # one of two copies of another group's
ONLY = replace(BASE, name="only", displaced_tokens=2400)  # another group's only copy


# The group's copy is in one slot, and its share of the requests is worth two of the six slots.
ONE_OF_TWO = Copies(idle=1, busy=0, due=2.0)


def copy(
    *views: NodeView, request: RouteRequest = FIRST, copies: Copies = ONE_OF_TWO
) -> str | None:
    choices = make_strategy("performance").rank(request, views)
    made = early_copy(request, ROOT, copies, choices)
    return None if made is None else made.node


def test_a_cheap_request_copies_the_prefix_when_it_would_take_the_groups_last_idle_copy() -> None:
    choices = make_strategy("performance").rank(FIRST, [HOME, SPARE, ONLY])
    assert [c.node for c in choices] == ["home", "spare", "only"]  # the hit, by far
    made = early_copy(FIRST, ROOT, ONE_OF_TWO, choices)
    assert made is not None and made.node == "spare"
    assert made.reason.endswith("early copy of the shared prefix")
    assert "est" in made.reason and made.estimate == choices[1].estimate


def test_no_copy_while_the_group_has_an_idle_copy_to_spare_or_its_share_of_the_slots() -> None:
    assert copy(HOME, SPARE, copies=Copies(1, 1, 3.0)) == "spare"
    # Another idle copy is left for the group's next request.
    assert copy(HOME, SPARE, copies=Copies(2, 0, 3.0)) is None
    # Its share of the requests is worth 1.5 slots of the six: it holds two, or one.
    assert copy(HOME, SPARE, copies=Copies(1, 1, 1.5)) is None
    assert copy(HOME, SPARE, copies=Copies(1, 0, 1.5)) == "spare"


def test_no_copy_by_a_request_whose_miss_costs_more_than_the_prefix() -> None:
    late = replace(FIRST, prompt_tokens=3400)  # a later turn: its own history would miss too
    assert copy(replace(HOME, cached_tokens=3300), SPARE, request=late) is None
    edge = replace(FIRST, prompt_tokens=ROOT + ROOT // 4)  # its own part a quarter of the prefix
    assert copy(HOME, SPARE, request=edge) == "spare"


def test_no_copy_over_another_groups_only_copy_nor_onto_a_busy_node() -> None:
    assert copy(HOME, ONLY) is None
    assert copy(HOME, replace(SPARE, model_in_flight=2, in_flight=2), ONLY) is None
    assert copy(HOME, replace(SPARE, resident=False)) is None  # a load is no early copy
    # The node's idle slot holding part of the prompt already: not a new copy.
    assert copy(HOME, replace(SPARE, cached_tokens=ROOT)) is None


def test_no_copy_when_the_best_node_is_not_an_idle_copy() -> None:
    assert copy(replace(HOME, cached_tokens=0), SPARE) is None  # a miss anyway: ranked as is
    assert copy(replace(HOME, model_in_flight=2, slot_wait_s=0.1), SPARE) is None
