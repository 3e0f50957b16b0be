"""What every node's slots hold, per model, and how often that belief was right (reference 5.7).

Each loaded model on each node is a `routing.slot_cache.SlotCache`: its slots and the prefix keys
of the prompt each last served, filled by the proxy's own dispatches in the order llama-server
would fill them (longest common prefix above 10% of the prompt, else least recently used). For a
new request, `probe` tells per node how many prompt tokens the slot it would get holds, what that
slot would push out (the prefixes other conversations share, weighted by how often they are
asked for and how many nodes hold them: prefix_demand.py), and what a busy slot holds that the request would find
by waiting for it. A shared system prompt counts for every conversation that starts with it.

The truth comes back with the answer: Ollama's `prompt_eval_count` is the whole prompt and its
`prompt_eval_duration` covers only what was evaluated (reference 5.6), so at the node's learned
prefill speed the cached part is `count - duration * speed`. `finish` compares it with the
prediction and keeps the score per node and model (`accuracy`); a predicted hit that was a miss
means the runner lost what the proxy believed it held (an unload or restart it did not see,
another client's requests), and its idle slots are forgotten. A model that unloads or reloads
loses everything (`forget`). Memory is bounded by nodes x models x slots x `MAX_KEYS` keys, and
by `max_roots` demand counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from sollol_proxy.fleet.accuracy import Accuracy, Warmups
from sollol_proxy.fleet.prefix_copies import FirstCopies
from sollol_proxy.fleet.prefix_demand import Demand
from sollol_proxy.fleet.reservations import Reservations
from sollol_proxy.routing.slot_cache import SlotCache, Take
from sollol_proxy.routing.slot_match import PrefixKeys, Slot, common_tokens, heads


class Probe(NamedTuple):
    """One node's cache as one request would find it (a named tuple, made in `probe` without
    its Python-level `__new__`: one is made per node per request)."""

    cached: int = 0  # prompt tokens the slot it would get now holds (0: none, or no idle slot)
    displaced: float = 0.0  # tokens of shared prefixes that slot would lose, weighted by demand
    # By waiting for a busy slot instead: the most prompt tokens such a slot holds (0 when no
    # busy slot holds more than the similarity threshold, or not more than `cached`), when the
    # oldest request in those slots started, and how many they are.
    waiting_cached: int = 0
    waiting_since: float = 0.0
    waiting_slots: int = 0
    # Every slot the node is believed to have is busy: when the oldest request in them started
    # (None: a slot is idle). Admission may let more in while it probes for more slots.
    full_since: float | None = None


NO_PROBE = Probe()


class Rounds:
    """What one request's probes in rounds (fleet/pricing.py) share, worked out once: the
    runners of every node given and how many hold each first prefix."""

    __slots__ = ("copies", "runners")

    def __init__(self) -> None:
        self.runners: dict[str, SlotCache] | None = None
        self.copies: dict[bytes, int] | None = None


@dataclass(slots=True)
class Ticket:
    """One request's slot on one node, from dispatch to its last byte."""

    node: str
    model: str
    take: Take
    counted: bool = True  # a client's request: its prefixes count as demand


class PromptCache:
    def __init__(self, max_roots: int = 10_000) -> None:
        self._runners: dict[tuple[str, str], SlotCache] = {}  # (node, model)
        # The same runners by model, then node: a probe looks up every candidate's runner,
        # and a pair key is a tuple made and hashed per node per request.
        self._by_model: dict[str, dict[str, SlotCache]] = {}
        self._copies: dict[str, FirstCopies] = {}  # model -> its runners' first prefixes
        self.demand = Demand(max_roots)
        self._reserved: Reservations[Ticket] = Reservations()
        self.accuracy: dict[tuple[str, str], Accuracy] = {}
        self.warmups = Warmups()
        # Told the model whenever a dispatch takes a slot or an end frees one (forward/warmup.py).
        self.listener: Callable[[str], None] | None = None

    def _runner(self, node: str, model: str, slots: int, now: float) -> SlotCache:
        runner = self._runners.get((node, model))
        if runner is None:
            runner = self._runners[(node, model)] = SlotCache(slots)
            self._by_model.setdefault(model, {})[node] = runner
            self._changed(node, model)
        elif len(runner.slots) < slots:
            # Only ever more: a belief that drops takes no slot from a running runner, and
            # dropping one forgot what it held (the node looked empty and drew a group there).
            runner.resize(slots, now)
            self._changed(node, model)
        return runner

    def first_copies(self, model: str, nodes: Collection[str]) -> dict[bytes, int]:
        """How many runners of `model` on `nodes` (nodes that have one) hold each first prefix."""
        copies = self._copies.get(model)
        return {} if copies is None else copies.over(self._by_model[model], nodes)

    def _changed(self, node: str, model: str) -> None:
        """The slots of `model` on `node` changed (or may have): count its first prefixes again."""
        copies = self._copies.get(model)
        if copies is None:
            copies = self._copies[model] = FirstCopies()
        copies.stale.add(node)

    def slots(self, node: str, model: str) -> list[Slot]:
        """What the proxy believes each slot of `model` on `node` holds."""
        runner = self._runners.get((node, model))
        return list(runner.slots) if runner else []

    def describe(self, node: str) -> dict[str, list[dict[str, object]]]:
        """For /sollol/nodes: per model, each slot's tokens (prompt and answer) and state."""
        return {
            model: [
                {"tokens": slot.held + slot.answer, "busy": slot.busy}
                for slot in self.slots(node, model)
            ]
            for (name, model) in self._runners
            if name == node
        }

    # -- routing -----------------------------------------------------------------------------

    def probe(
        self,
        model: str,
        keys: PrefixKeys,
        slots: Mapping[str, int],
        now: float | None = None,
        only: Collection[str] | None = None,
        rounds: Rounds | None = None,
    ) -> dict[str, Probe]:
        """For each node in `slots` (name -> slots of the model there), or only those in
        `only` (`rounds`: shared by one request's probes in rounds, same `slots`), what this
        prompt would find; nodes where nothing is believed cached are left out. A displaced
        prefix's worth counts every node in `slots`, whichever are in `only`."""
        if not keys:
            return {}
        now = time.monotonic() if now is None else now
        known = self._by_model.get(model, {})
        runners = None if rounds is None else rounds.runners
        if runners is None:
            runners = {}
            for node, count in slots.items():  # as _runner, in one lookup per node
                runner = known.get(node)
                if runner is not None:
                    if len(runner.slots) < count:
                        runner.resize(count, now)
                        self._changed(node, model)
                    runners[node] = runner
            if rounds is not None:
                rounds.runners = runners
        found: dict[str, Probe] = {}
        demand = self.demand
        copies = None if rounds is None else rounds.copies  # nodes holding each first prefix
        fleet_slots = sum(slots.values())
        keys_only = heads(keys)
        first_key = keys_only[0]
        worth: dict[bytes, float] = {}  # first prefix -> what losing a node's copy costs
        new_probe = tuple.__new__
        probed = (
            runners.items()
            if only is None
            else [(node, runners[node]) for node in only if node in runners]
        )
        for node, runner in probed:
            outsider = runner.outsider()
            full = None
            waiting, waiting_slots, since = 0, 0, 0.0
            if first_key not in outsider.firsts and outsider.victim is not None:
                # Most runners: worked out once per change of their slots.
                slot, cached, root, history = outsider.victim, 0, outsider.root, outsider.history
            else:
                slot, cached = runner.choose(keys, keys_only=keys_only)
                if slot is None:  # all busy: sent now, it waits there for the first slot to free
                    slot, cached = runner.when_full(keys, keys_only)
                    full, kept = slot.started, common_tokens(slot, keys, keys_only)
                else:
                    kept = cached
                # `kept` is what the prompt keeps of `slot`: what `displaced` would count again.
                root, history = runner.pushed_out(slot, kept) if slot.keys else (0, 0)
                if first_key in outsider.firsts:
                    waiting, waiting_slots, since = runner.busy_holding(keys, keys_only)
                    if full is None and waiting <= cached:  # an idle slot has as much
                        waiting, waiting_slots, since = 0, 0, 0.0
            displaced = 0.0
            if slot.keys:
                if root:
                    first = slot.keys[0]
                    if first not in worth:
                        if copies is None:
                            copies = self.first_copies(model, runners.keys())
                            if rounds is not None:
                                rounds.copies = copies
                        worth[first] = demand.worth(model, first, copies[first], fleet_slots)
                    displaced = root * worth[first]
                if history > 0:
                    displaced += demand.history(model, history, now - slot.ended)
            if cached or displaced or waiting or full is not None:
                found[node] = new_probe(
                    Probe, (cached, displaced, waiting, since, waiting_slots, full)
                )
        return found

    # -- dispatches ----------------------------------------------------------------------------

    def reserve(
        self, node: str, model: str, keys: PrefixKeys, slots: int, now: float | None = None
    ) -> None:
        """The request was just given `node`: its slot is taken now, before it is sent, so that
        the requests ranked in the meantime do not count on that slot. Its dispatch claims it
        (`take` with the same `keys` object)."""
        now = time.monotonic() if now is None else now
        self._expire(now)
        if keys:
            # Chosen again (a refusal by the replicas' shared slots): the earlier one goes back.
            earlier = self._reserved.claim(keys)
            if earlier is not None:
                self.finish(earlier, served=False)
            ticket = self._take(node, model, keys, slots, fresh=False, now=now)
            self._reserved.hold(keys, ticket, now)

    def take(
        self,
        node: str,
        model: str,
        keys: PrefixKeys,
        slots: int,
        *,
        fresh: bool = False,
        counted: bool = True,
        now: float | None = None,
    ) -> Ticket | None:
        """The request was sent to `node`: it takes the slot llama-server will give it (or
        waits for one), or the one reserved for it there. `fresh`: the model is not loaded
        there yet, so its slots start empty. `counted`: a client's request, whose prefixes
        count as demand (not a warm-up's)."""
        if not keys:
            return None
        if self.listener is not None:
            self.listener(model)
        now = time.monotonic() if now is None else now
        self._expire(now)
        ticket = self._reserved.claim(keys)
        if ticket is not None:
            if ticket.node == node and ticket.model == model:
                if fresh:
                    ticket.take.runner.clear(busy_too=True)
                    self._changed(node, model)
                return ticket
            self.finish(ticket, served=False)  # it went elsewhere (a failover)
        return self._take(node, model, keys, slots, fresh=fresh, now=now, counted=counted)

    def _take(
        self,
        node: str,
        model: str,
        keys: PrefixKeys,
        slots: int,
        *,
        fresh: bool,
        now: float,
        counted: bool = True,
    ) -> Ticket:
        if counted:
            self.demand.count(model, keys, now)
        runner = self._runner(node, model, slots, now)
        if fresh:
            runner.clear(busy_too=True)
        self._changed(node, model)
        return Ticket(node, model, runner.take(keys, now), counted)

    def _expire(self, now: float) -> None:
        """Give back the reservations that ran out (fleet/reservations.py)."""
        for ticket in self._reserved.expired(now):
            self.finish(ticket, served=False)

    def finish(
        self,
        ticket: Ticket,
        *,
        answer: int = 0,
        served: bool = True,
        prompt_count: int = 0,
        observed: int | None = None,
        ratio: float = 1.0,
        now: float | None = None,
    ) -> None:
        """The request left its slot; `served`: its prompt reached the node, which now holds it
        and `answer` more tokens (the proxy's units). `observed`: the prompt tokens Ollama's
        timing fields say were cached, out of `prompt_count` (Ollama's units, `ratio` of the
        proxy's), to score the prediction against."""
        take = ticket.take
        runner = take.runner
        if observed is not None and prompt_count > 0 and take.slot is not None:
            score = self.accuracy.get((ticket.node, ticket.model))
            if score is None:
                score = self.accuracy[(ticket.node, ticket.model)] = Accuracy()
            if score.missed(round(take.cached * ratio), observed, prompt_count):
                runner.clear(keep=take)
        now = time.monotonic() if now is None else now
        runner.release(take, now, answer, served=served)
        self._changed(ticket.node, ticket.model)
        if served and take.keys and ticket.counted:
            self.demand.ended(ticket.model, take.keys, now)
        if self.listener is not None:
            self.listener(ticket.model)

    def record(
        self, model: str, node: str, keys: PrefixKeys, slots: int = 1, answer: int = 0
    ) -> None:
        """`node` served this prompt (a dispatch and its end at once)."""
        ticket = self.take(node, model, keys, slots)
        if ticket is not None:
            self.finish(ticket, answer=answer)

    def forget(self, node: str, models: Iterable[str]) -> None:
        """These models were unloaded or reloaded on `node`: their slots are empty. Requests
        in flight there keep their slot, and fill it when they end."""
        for model in models:
            runner = self._runners.get((node, model))
            if runner is not None:
                runner.clear(busy_too=True)
                self._changed(node, model)
