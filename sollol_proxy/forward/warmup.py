"""Warm-ups: a prefill the proxy sends itself, into an idle slot, to copy a shared system prompt
before the group that shares it needs another copy (issue #18).

When more conversations share a system prompt than there are slots holding it, a request of the
group finds every copy busy: it waits in the proxy for one, or pays the whole system prompt on
another node (0.4-0.75 s at the benchmark's prefill speed, which is the p95 line itself). A copy
made by a client's request is that same miss, paid by that client. One the proxy makes itself
into a slot nobody is using costs no client anything, so it is made, one at a time per model,
when all of these hold:

- nobody waits in admission control but by choice, for a busy slot holding its prompt
  (`Selector.holding`: the wait a copy elsewhere would spare), and at least two of the model's
  believed slots are free across the fleet, so the warm-up's slot is not one a client is about
  to need (it takes a slot in admission control like a request, so no client is sent behind it
  into Ollama's queue, but for admission's probe beyond the believed slots, issue #11);
- the model is resident on the node and the node's runner options are the ones the group's
  requests carried, so it can neither load a model nor make Ollama reload one (reference 5.4);
- no idle slot of the fleet holds the group's system prompt, and the slot llama-server would give
  the warm-up (the least recently used idle one: it matches nothing) holds prefixes worth less
  than the copy: `PromptCache.probe` prices both, as it prices a client's request
  (`Demand.worth`: a shared prefix's share of the model's recent requests times the fleet's
  slots, split over the nodes holding it).

The request is what the group's own requests start with, so that llama-server keeps the same
tokens (reference 5.7): `POST /api/chat` with the group's first message alone, `stream: false`,
the runner options of the node's runner, `num_predict: 1` (one token decoded, a few ms) and no
`keep_alive` (an absent one leaves the runner's session duration as the last request set it,
reference 5.3). The prompt-cache map records it like a dispatch (its slot busy while it runs,
then holding the prompt), without counting it as demand for the prefix. `/sollol/stats` and
`/metrics` count them (`PromptCache.warmups`).

Only native chat requests whose first message is a system prompt of at least `MIN_TOKENS` are
copied; not with replicas sharing state in Redis (each would copy the same prompt), and not with
`routing.warmups: false`. What clients send is bounded: only models the fleet has, and at most
`KEPT_CHARS` of first messages in all, none longer than `MESSAGE_CHARS`, the least recently seen forgotten first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from sollol_proxy.admission.admission import Admission
from sollol_proxy.config.model import Config
from sollol_proxy.fleet.capacity import model_slots, slot_belief
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.health import State
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.prompt_cache import NO_PROBE, PromptCache
from sollol_proxy.lifecycle.background import Background
from sollol_proxy.routing.analysis import RequestProfile
from sollol_proxy.wire.headers import upstream_probe_headers

log = logging.getLogger("sollol.warmup")

# A system prompt shorter than this is not worth a request of its own: its prefill is about the
# cost of the request around it.
MIN_TOKENS = 256
# Shared first messages remembered per model (the most recently seen) ...
KEPT = 64
# ... and their characters in all, every model's together (a client chooses them); a longer
# first message than MESSAGE_CHARS is not kept.
KEPT_CHARS = 8 * 2**20
MESSAGE_CHARS = 2**17
# A warm-up that has not answered by then is given up (its slot is given back).
TIMEOUT_S = 30.0
# Free slots the fleet must have, the warm-up's included.
FREE_SLOTS = 2
# The groups most in demand that are probed for a copy, per change of the slots.
PROBED = 4
# After a warm-up that failed, none for the model for this long (no loop of failures).
QUIET_S = 10.0
# Slot changes of a model within this long are looked at once (a look costs about 0.1 ms).
GATHER_S = 0.02
# A group whose requests carry one of these is not copied: `shift` is a runner option Ollama
# reloads for (reference 5.4), and `think` and `tools` change what the template renders before
# or around the system prompt, so a copy without them would not hold the group's tokens.
_OWN = ("shift", "think", "tools")


@dataclass(frozen=True, slots=True)
class _Group:
    message: dict[str, str]  # the first message, as the group's requests send it
    tokens: int  # the proxy's estimate of its tokens (the prefix key's)
    options: tuple[tuple[str, object], ...]  # the runner options its requests carried


class Warmer:
    def __init__(
        self,
        on: bool,
        fleet: Fleet,
        admission: Admission,
        cache: PromptCache,
        session: aiohttp.ClientSession,
        tasks: Background,
        enabled: Callable[[str], bool],
        holding: Callable[[], int],
    ) -> None:
        self._on = on
        self._fleet = fleet
        self._session = session
        self._admission = admission
        self._cache = cache
        self._groups: dict[str, OrderedDict[bytes, _Group]] = {}  # model -> first key -> group
        self._chars = 0  # of the first messages kept, every model's
        self._pending: set[str] = set()  # models whose check is scheduled
        self._running: set[str] = set()  # models with a warm-up under way
        self._tasks = tasks  # the app's: cancelled and awaited at a stop
        self._enabled = enabled  # model -> is it routed by `performance`
        self._holding = holding  # requests waiting by choice for a busy slot (Selector.holding)
        self._quiet: dict[str, float] = {}  # model -> no warm-up before (after a failure)
        cache.listener = self.soon

    def reconfigure(self, config: Config) -> None:
        self._on = config.warmups
        if not self._on:
            self._groups.clear()
            self._chars = 0

    def note(self, profile: RequestProfile, payload: Any) -> None:
        """A client's request: remember its first message when it is a long system prompt."""
        keys = profile.prefix_keys
        if not self._on or profile.endpoint != "chat" or len(keys) < 2 or keys[0][1] < MIN_TOKENS:
            return
        if not self._enabled(profile.model) or not self._fleet.has_model(profile.model):
            return
        if not isinstance(payload, dict) or any(payload.get(key) is not None for key in _OWN):
            return
        messages = payload.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        if not isinstance(first, dict) or first.get("images") or first.get("tool_calls"):
            return
        role, content = first.get("role"), first.get("content")
        if not isinstance(role, str) or role.lower() != "system" or not isinstance(content, str):
            return
        if len(content) > MESSAGE_CHARS:
            return
        groups = self._groups.setdefault(profile.model, OrderedDict())
        root = keys[0][0]
        if root in groups:
            groups.move_to_end(root)
            return
        groups[root] = _Group(
            {"role": "system", "content": content}, keys[0][1], profile.runner_options
        )
        self._chars += len(content)
        if len(groups) > KEPT:
            self._forget(groups)
        while self._chars > KEPT_CHARS:  # the model with most kept gives up its oldest
            self._forget(max(self._groups.values(), key=len))

    @property
    def kept(self) -> tuple[int, int]:
        """First messages remembered, and their characters, every model's together."""
        return sum(len(groups) for groups in self._groups.values()), self._chars

    def _forget(self, groups: OrderedDict[bytes, _Group]) -> None:
        _, group = groups.popitem(last=False)
        self._chars -= len(group.message["content"])

    def soon(self, model: str) -> None:
        """The slots of `model` changed (a dispatch, an end): look for a copy to make, once the
        event loop has run what the change set off (admission hands out freed slots first)."""
        if model in self._groups and model not in self._pending and model not in self._running:
            self._pending.add(model)
            asyncio.get_running_loop().call_later(GATHER_S, self._consider, model)

    def _consider(self, model: str) -> None:
        self._pending.discard(model)
        if model not in self._groups:  # forgotten meanwhile (a reload turned warm-ups off)
            return
        # A request waiting for any free slot would want the warm-up's; one waiting by choice for
        # a busy slot holding its prompt would not (and is what a copy elsewhere spares).
        if model in self._running or self._admission.waiting > self._holding():
            return
        if time.monotonic() < self._quiet.get(model, 0.0):
            return
        free: dict[str, tuple[NodeState, int]] = {}
        slots: dict[str, int] = {}
        # Every holder, not `with_model`'s healthy ones: where none admits work, that ends their
        # ejections and cool-downs for a client's request, which a warm-up is not.
        for node in self._fleet.with_model(model, healthy_only=False):
            if not node.health.admits() or not node.is_resident(model):
                continue
            slots[node.name] = believed = model_slots(node, model)
            spare = believed - self._admission.slots.held.get(node.name, {}).get(model, 0)
            if spare > 0 and node.health.current() is not State.HALF_OPEN:
                free[node.name] = (node, spare)
        if sum(spare for _, spare in free.values()) < FREE_SLOTS:
            return
        fleet_slots = sum(slots.values())
        copies = self._cache.first_copies(model, slots)
        # What one more node's copy is worth, priced as a client's request prices pushing one
        # out (so a copy never pushes out a group's that is worth as much: no churn between
        # groups of equal demand); only the groups most in demand are probed (a probe per group
        # per change costs).
        worth = self._cache.demand.worth
        gains = sorted(
            (
                (worth(model, root, copies.get(root, 0) + 1, fleet_slots) * group.tokens, root)
                for root, group in self._groups[model].items()
            ),
            reverse=True,
        )[:PROBED]
        best: tuple[float, _Group, bytes, NodeState] | None = None
        for gain, root in gains:
            if gain <= 0:
                break
            group = self._groups[model][root]
            probes = self._cache.probe(model, ((root, group.tokens),), slots)
            if any(probe.cached and probe.full_since is None for probe in probes.values()):
                continue  # an idle slot holds it already (a full runner's is what a wait finds)
            for name, (node, _) in free.items():
                if node.runner_options.get(model) != group.options:
                    continue  # unknown or other options: Ollama could load or reload
                margin = gain - probes.get(name, NO_PROBE).displaced
                if margin > 0 and (best is None or margin > best[0]):
                    best = (margin, group, root, node)
        if best is not None:
            _, group, root, node = best
            self._running.add(model)
            self._tasks.start(f"warmup:{model}@{node.name}", self._warm(node, model, group, root))

    async def _warm(self, node: NodeState, model: str, group: _Group, root: bytes) -> None:
        counts = self._cache.warmups
        counts.sent += 1
        counts.tokens += group.tokens
        body = {
            "model": model,
            "messages": [group.message],
            "stream": False,
            "options": {**dict(group.options), "num_predict": 1},
        }
        self._admission.take(node, model)
        ticket = self._cache.take(
            node.name, model, ((root, group.tokens),), model_slots(node, model), counted=False
        )
        # Counted among the requests running there, so that a client's request sent beside it
        # is learned from with the right count; its own wait is not known (settled as unknown).
        belief = slot_belief(node, model)
        sent = time.monotonic()
        probe = belief.dispatched(sent)[1] if belief is not None else False
        served = False
        try:
            async with (
                self._fleet.lease(node, model),
                self._session.post(
                    node.config.url + "/api/chat",
                    json=body,
                    headers=upstream_probe_headers(node.config),
                    timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
                ) as response,
            ):
                answer = await response.json(content_type=None)
                served = response.status == 200 and isinstance(answer, dict)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.info("warm-up of %s on %s failed: %s", model, node.name, exc)
        finally:
            counts.done += served
            counts.failed += not served
            now = time.monotonic()
            if not served:
                self._quiet[model] = now + QUIET_S
            self._running.discard(model)
            self._admission.give(node, model)
            if belief is not None:
                node.beliefs.note(model, belief.settled(sent, now, now))
                belief.ended(now, probe)
            if ticket is not None:
                # Its one token is no turn of the group's: no answer for a request to continue.
                # Last: the listener looks again (`soon`) once the slot is given back.
                self._cache.finish(ticket, served=served)
