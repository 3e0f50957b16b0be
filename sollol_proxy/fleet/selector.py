"""Which nodes may take a request, in which order: the fleet's facts fed to the routing strategy."""

from __future__ import annotations

import time

from aiohttp import web

from sollol_proxy.config import Config
from sollol_proxy.fleet.capacity import model_slots
from sollol_proxy.fleet.decisions import Decision, DecisionLog
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.plan import Candidates, NoTarget, Plan, Target, failover, least_loaded
from sollol_proxy.fleet.pricing import bounded, price, top_size
from sollol_proxy.fleet.prompt_cache import NO_PROBE, PromptCache, Rounds
from sollol_proxy.fleet.snapshot import wait_on
from sollol_proxy.fleet.views import Kept, Views, probed, with_probe
from sollol_proxy.fleet.waiting import Hold, Waits
from sollol_proxy.routing import STRATEGIES, Reason, RouteRequest, Strategy, make_strategy
from sollol_proxy.routing.analysis import RequestProfile
from sollol_proxy.routing.performance import Performance, ranked, worth_waiting
from sollol_proxy.wire.headers import NODE_HEADER
from sollol_proxy.wire.logsafe import loggable

ALL_NODES = "all"


class Selector:
    def __init__(
        self,
        config: Config,
        fleet: Fleet,
        learner: Learner,
        prompt_cache: PromptCache,
        decisions: DecisionLog,
    ) -> None:
        self._fleet = fleet
        self._learner = learner
        self._prompt_cache = prompt_cache
        self._decisions = decisions
        self._waits = Waits()
        self._views = Views(learner, fleet.healthy)
        self._strategies = {name: make_strategy(name) for name in STRATEGIES}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration: strategies keep their state (e.g. round_robin's position)."""
        self._views.clear()
        self._default = self._strategies[config.strategy]
        # Without the proxy's queue a request waits in the node's own queue, which the
        # estimate prices: nothing is held back here for a busy slot.
        self._may_hold = config.queue.enabled
        self._per_model = {m: self._strategies[s] for m, s in config.model_strategies.items()}
        self._top = top_size(config.max_attempts)
        self._beyond = f"{Performance.name}: not in the top {self._top}, by a lower bound"

    def strategy_for(self, model: str) -> Strategy:
        return self._per_model.get(model, self._default)

    def pinned(self, request: web.Request, *, allow_all: bool) -> list[NodeState] | None:
        """Nodes named by the operator's X-Sollol-Node header, or None when it is absent."""
        value = request.headers.get(NODE_HEADER, "").strip()
        if not value:
            return None
        if value.lower() == ALL_NODES:
            if not allow_all:
                raise NoTarget(
                    400,
                    f"{NODE_HEADER}: all only applies to management routes (pull, delete, copy, create, push)",
                )
            return self._healthy()
        # Each node once, and never more nodes than the fleet has: a header repeating one name
        # 30,000 times is one node, not 30,000 upstream requests.
        names = list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
        if not names:
            raise NoTarget(400, f"{NODE_HEADER} names no node")
        unknown = [name for name in names if name not in self._fleet.nodes]
        if unknown:
            known = ", ".join(self._fleet.nodes)
            raise NoTarget(
                400,
                f"{NODE_HEADER} names unknown node '{loggable(unknown[0], 64)}' (known: {known})",
            )
        return [self._fleet.nodes[name] for name in names]

    def pinned_targets(self, request: web.Request) -> list[Target] | None:
        """The operator's pinned nodes as targets (not `all`), or None when nothing is pinned."""
        pinned = self.pinned(request, allow_all=False)
        return (
            None
            if pinned is None
            else [Target(n, f"pinned by {NODE_HEADER}", Reason.PINNED, pinned=True) for n in pinned]
        )

    def _healthy(self) -> list[NodeState]:
        nodes = self._fleet.healthy()
        if not nodes:
            raise NoTarget(503, f"no healthy Ollama node ({self._fleet.unhealthy_summary()})")
        return nodes

    def any_node(self, request_id: str, why: str, reason: Reason) -> list[Target]:
        """Requests that do not depend on a model: any healthy node, least loaded first."""
        return least_loaded(self._healthy(), request_id, why, reason)

    def _rank(
        self,
        nodes: list[NodeState],
        profile: RequestProfile,
        request_id: str,
        priority: int,
        hold: Hold | None = None,
    ) -> Plan:
        """Rank the free `nodes`; a request that may still wait (`hold`: its earlier decision to,
        or a new one) can prefer a busy slot that holds its prompt."""
        model = profile.model
        strategy = self.strategy_for(model)
        now = time.monotonic()
        waitable = (
            self._waitable(model)
            if self._may_hold
            and isinstance(strategy, Performance)
            and (hold is None or now < hold.until or not hold.extended)
            else []
        )
        # The cache model mirrors the runners' real slots: the belief, not the admission limit
        # of a node still in slow start (resizing it would forget what the slots hold).
        bases = self._views.bases(nodes, profile, now)
        slots = {entry.name: entry.slots for entry in bases}
        # A free node's is its kept view's, made from the same belief (a change counts).
        slots.update((n.name, model_slots(n, model)) for n in waitable if n.name not in slots)
        # The analysis estimates tokens at 4 characters each; the learned ratio turns that into
        # this model's tokens, the unit of Ollama's counts and of the learned speeds.
        ratio = self._learner.token_ratio(model)
        if hold is None:
            self._learner.observe_request(model)
        request = RouteRequest(
            model=model,
            request_id=request_id,
            prompt_tokens=round(profile.prompt_tokens * ratio),
            expected_output=self._learner.expected_output(model, profile.task, profile.max_output),
        )
        others: list[Kept] = []
        only_top = isinstance(strategy, Performance) and bounded(len(bases), self._top)
        if only_top:
            # Only the candidates that can be in the top are probed and estimated (pricing.py).
            rounds = Rounds()
            priced = price(
                bases,
                request,
                self._top,
                lambda names: self._prompt_cache.probe(
                    model, profile.prefix_keys, slots, now, only=names, rounds=rounds
                ),
                lambda entries, found: probed(entries, found, ratio, now, self._learner, profile),
                [n.name for n in waitable],
            )
            views, probes, others = priced.views, priced.probes, priced.others
            choices = ranked(request, views, priced.estimates)
        else:
            probes = self._prompt_cache.probe(model, profile.prefix_keys, slots, now)
            views = probed(bases, probes, ratio, now, self._learner, profile)
            choices = strategy.rank(request, views)
        # The resident holders whose busy slots hold a prefix of the prompt: only then is
        # waiting weighed (with none, `worth_waiting` finds nothing worth it).
        held = (
            [n for n in waitable if probes.get(n.name, NO_PROBE).waiting_cached]
            if waitable and choices
            else []
        )
        if held:
            # Each from a copy of the node's kept view (made again only if its node changed),
            # not a fresh snapshot per waitable node per request.
            waiting = []
            for entry in self._views.bases(held, profile, now):
                view = with_probe(entry.view, 0, 0.0)  # type: ignore[arg-type]  # made by bases
                count = self._waits.count(entry.name, now, but=hold)
                wait_on(view, profile, self._learner, probes[entry.name], ratio, count, now)
                waiting.append(view)
            free = [c.estimate for c in choices if c.estimate is not None]
            wait = worth_waiting(request, free, waiting)
            if wait is not None:
                # A hold that ran out is weighed again once, from now: what it waited is spent,
                # and a miss now would pay the wait and the prefill both.
                extend = hold is not None and now >= hold.until
                until = now + wait.budget_s if hold is None or extend else hold.until
                extended = hold is not None and (extend or hold.extended)
                return Plan(
                    hold=self._waits.hold(wait.node, until, replacing=hold, extended=extended)
                )
        self._waits.release(hold)
        kept = self._views.kept(model)
        targets = failover(kept, choices, strategy.name, others, self._beyond)
        if choices:
            first = choices[0].node
            self._prompt_cache.reserve(first, model, profile.prefix_keys, slots[first], now)
        # Exact estimates are shown for the top; the others by name, in the order tried.
        shown = choices[: self._top] if only_top else choices
        unpriced = (*(c.node for c in choices[len(shown) :]), *(e.name for e in others))
        decision = Decision(
            request_id,
            profile,
            priority,
            strategy.name,
            request.expected_output,
            shown,
            views,
            unpriced,
        )
        self._decisions.add(decision)
        return Plan(targets, decision)

    def holding(self) -> int:
        """Requests waiting by choice for a busy slot holding their prompt (forward/warmup.py)."""
        return self._waits.total(time.monotonic())

    def _waitable(self, model: str) -> list[NodeState]:
        """Nodes whose busy slots a request for `model` could wait for: resident holders."""
        return [n for n in self._fleet.with_model(model) if n.is_resident(model)]

    async def for_model(
        self, request: web.Request, profile: RequestProfile, request_id: str, priority: int
    ) -> Plan | Candidates:
        """Where a model request may go: a Plan to forward at once (nothing to wait for), or
        the Candidates that admission control picks from when a slot is free."""
        model = profile.model
        pinned = self.pinned(request, allow_all=False)
        if pinned is not None:
            return Candidates(
                (model, *(n.name for n in pinned)),
                lambda: self._pinned_up(pinned),
                lambda free: Plan(
                    [
                        Target(n, f"pinned by {NODE_HEADER}", Reason.PINNED, pinned=True)
                        for n in free
                    ]
                ),
            )
        if not model:
            # No model to route by: the node answers with Ollama's own error for that.
            return Plan(self.any_node(request_id, "no model named", Reason.NO_MODEL))
        listed = self._fleet.has_model(model)
        if not listed:
            await self._fleet.refresh_for_missing_model()
            listed = self._fleet.has_model(model)
        if listed:
            held: list[Hold | None] = [None]  # the request's latest decision to wait

            def choose(free: list[NodeState]) -> Plan:
                plan = self._rank(free, profile, request_id, priority, held[0])
                held[0] = plan.hold or held[0]
                return plan

            return Candidates((model,), lambda: self._holders(model), choose)
        # No node has it: a node answers with Ollama's own "not found" for this route, byte for byte.
        return Plan(self.any_node(request_id, "no node has the model", Reason.NO_NODE_HAS_MODEL))

    async def for_metadata(self, request: web.Request, model: str, request_id: str) -> list[Target]:
        """/api/show and /v1/models/:model: Ollama reads them from the model's files, loading
        nothing and taking no slot, so there is nothing to estimate or wait for: any node with
        the model answers, the least loaded first."""
        pinned = self.pinned_targets(request)
        if pinned is not None:
            return pinned
        if not model:
            return self.any_node(request_id, "no model named", Reason.NO_MODEL)
        if not self._fleet.has_model(model):
            await self._fleet.refresh_for_missing_model()
        if not self._fleet.has_model(model):
            return self.any_node(request_id, "no node has the model", Reason.NO_NODE_HAS_MODEL)
        why = "model metadata, nothing to load or generate"
        return least_loaded(self._holders(model), request_id, why, Reason.METADATA)

    def _holders(self, model: str) -> list[NodeState]:
        holders = self._fleet.with_model(model)
        if not holders:
            down = self._fleet.with_model(model, healthy_only=False)
            raise NoTarget(
                503,
                f"model '{model}' is only on nodes that are down ({self._fleet.unhealthy_summary(down)})",
            )
        return holders

    def _pinned_up(self, pinned: list[NodeState]) -> list[NodeState]:
        up = [n for n in pinned if n.healthy]
        if not up:
            raise NoTarget(
                503,
                f"{NODE_HEADER}: the pinned node is down ({self._fleet.unhealthy_summary(pinned)})",
            )
        return up

    # -- management routes (see README "Managing models through the proxy") ------------------

    def placement(self) -> NodeState:
        """Where blobs and new models go: the first healthy node in configuration order, so that
        a blob upload and the create that uses it always meet on the same node."""
        return self._healthy()[0]

    def for_management(
        self, request: web.Request, kind: str, model: str, source_model: str, request_id: str
    ) -> tuple[list[NodeState], str]:
        """The nodes a pull/push/delete/copy/create runs on, and a label saying why."""
        pinned = self.pinned(request, allow_all=True)
        if pinned is not None:
            return pinned, f"{kind}: pinned by {NODE_HEADER}"
        if kind == "pull":
            nodes = self._healthy()
            return nodes, f"pull: every healthy node ({len(nodes)})"
        if kind in ("delete", "copy"):
            holders = self._fleet.with_model(model)
            if holders:
                return holders, f"{kind}: every healthy node with the model ({len(holders)})"
            return [
                self.any_node(request_id, "no node has the model", Reason.NO_NODE_HAS_MODEL)[0].node
            ], f"{kind}: no node has the model"
        if kind == "push":
            holders = self._fleet.with_model(model)
            if holders:
                return [
                    min(holders, key=lambda n: n.in_flight)
                ], "push: the least busy node with the model"
            return [
                self.any_node(request_id, "no node has the model", Reason.NO_NODE_HAS_MODEL)[0].node
            ], "push: no node has the model"
        # create: next to its base model when it names one the fleet has, else the placement node
        holders = self._fleet.with_model(source_model) if source_model else []
        if holders:
            return [holders[0]], "create: first healthy node with the base model"
        return [self.placement()], "create: placement node (first healthy node)"
