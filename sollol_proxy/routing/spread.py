"""An early copy of a group's shared prefix: spread a group over one more slot while a miss is
cheap, not when its burst finds every copy busy.

Conversations sharing a system prompt (a group) find it in whichever slots hold it. When a
group's requests come faster than its copies free, the next one either waits in the proxy for a
busy copy (then often prefills its own history, which the group's other conversations
overwrote) or misses on a free node with its whole prompt: on the routing benchmark's
`shared_prompts` those two make up a run's slowest 5%, and a late turn's miss (3-4k tokens) is
no shorter than the wait it replaces. A copy made at that moment costs the most it can.

So the copy is made earlier, by a request for which a miss costs little more than the shared
prefix itself (a conversation's first turns: the prompt is little more than the system prompt),
when the group holds fewer slots than its share of the fleet's (its share of the model's recent
requests times the slots: the same demand that prices pushing the prefix out) and this request
would take its last idle copy, leaving none for the next. The request then goes to a free node
that does not hold the prefix, whose idle slot it takes at once, provided what that slot pushes
out is worth little (`COPY_DISPLACED`: not another group's only copy, which the eviction price
counts at its full worth). The request pays the prefix's prefill, once; the group has one more
copy for its burst. Groups are given slots in proportion to their demand, as bounded loads give
keys nodes, and no group is given more than its share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sollol_proxy.routing.performance import Described, describe
from sollol_proxy.routing.slot_match import SLOT_PROMPT_SIMILARITY
from sollol_proxy.routing.types import Choice, RouteRequest

# A request is cheap to miss when its prompt beyond the shared prefix is at most this share of
# the prefix: its miss costs about what a group's first turn pays anyway.
CHEAP_SHARE = 0.25
# The copy may push out shared prefixes worth at most this share of the copied prefix's tokens
# (the eviction price weights a prefix by its demand over the nodes holding it: a group's only
# copy counts whole, one of two copies about half).
COPY_DISPLACED = 0.5
# A slot holding at least this share of the prefix holds the prefix (the rest is the template
# and rounding between the proxy's token estimates and Ollama's counts).
HOLDS = 0.9


class Copies(NamedTuple):
    """The slots believed to hold a group's shared prefix, over every node."""

    idle: int
    busy: int
    due: float  # the group's share of the fleet's slots: its share of the recent requests


def cheap(request: RouteRequest, root_tokens: int) -> bool:
    """Would a miss cost this request little more than its shared prefix? (Checked first: the
    copies are counted only then.) A longer prompt's miss is the tail an early copy spares."""
    return root_tokens > 0 and request.prompt_tokens <= root_tokens * (1 + CHEAP_SHARE)


class EarlyCopy(Described):
    """The node chosen to hold one more copy of the request's shared prefix."""

    __slots__ = ()

    @property
    def reason(self) -> str:
        if not self._reason:
            base = describe(self.view, self.estimate, self.compared, self.generates)
            self._reason = f"{base}, early copy of the shared prefix"
        return self._reason


def early_copy(
    request: RouteRequest,
    root_tokens: int,
    copies: Copies,
    choices: Sequence[Choice],
) -> EarlyCopy | None:
    """The free node to make an early copy on, to be tried first, or None. `root_tokens`: the
    request's shared first prefix (its group's system prompt), in the views' tokens;
    `copies`: the slots believed to hold it now, and its due; `choices`:
    `performance`'s ranking (its choices carry their views)."""
    if not cheap(request, root_tokens) or copies.idle > 1:
        return None  # another idle copy is left for the group's next request
    if copies.idle + copies.busy >= copies.due:
        return None  # the group holds its share of the slots already
    ranked = [c for c in choices if isinstance(c, Described)]
    if len(ranked) < 2 or ranked[0] is not choices[0]:
        return None
    best = ranked[0]
    if best.view.cached_tokens < HOLDS * root_tokens or best.estimate.wait > 0:
        return None  # no idle copy to keep for the group: the ranking already spreads
    for choice in ranked[1:]:
        view, est = choice.view, choice.estimate
        if view.cached_tokens > SLOT_PROMPT_SIMILARITY * request.prompt_tokens:
            continue  # holds part of the prompt already: not a new copy
        if est.wait > 0 or est.load > 0 or view.slot_wait_s is not None:
            continue  # no idle slot of a loaded runner there now
        if view.model_in_flight >= view.num_parallel:
            continue
        if view.displaced_tokens > COPY_DISPLACED * root_tokens:
            continue  # it would take another group's only copy
        return EarlyCopy(view, est, best.estimate.total, choice.generates)
    return None
