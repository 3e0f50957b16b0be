"""Each candidate's view, kept from one request to the next and made again only when what it
was made from changed.

A view (`snapshot.node_view`) prices a node for a model: its state, what was learned of it, the
evictions a load there would cost. Most of that changes with the node's own events, which the
proxy sees: a dispatch and its end (leases), loads starting and finishing, probes' /api/ps and
/api/tags, first bytes, what a dispatch or an answer teaches of its slots, each counted in
`NodeState.changes`; answers and failures, counted in `Learner.version`. A view is kept with
those counts and the load-time options it was priced for, and is reused while they are
unchanged, so a request that finds the fleet as the previous one left it costs a lookup per
candidate instead of a snapshot.

What other nodes' events change is refreshed once per `EPOCH_S` instead of at every event:
how popular each model is and how many nodes hold it (which prices evictions), the speeds and
load times other nodes measured (which stand in for a node that has not run the model), the
memory limits and slots learned from peers. Within an epoch a view may thus lag those
fleet-wide figures by up to a second; the node's own changes show at once. Each node's epoch
turns at its own point of the second (`epoch_offset`, from its name), so that the views of a
large fleet are made again a few per request rather than all by one request each second.

The prompt cache's findings (cached and displaced tokens) are per request: they are put on a
copy of the view for the nodes where the probe found something. Entries are kept per node and
model (the models a node lists), so a client's options or prompts cannot grow the table.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from sollol_proxy.fleet.capacity import model_slots
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.prompt_cache import Probe
from sollol_proxy.fleet.snapshot import demand_by_model, node_view
from sollol_proxy.routing import NodeView
from sollol_proxy.routing.analysis import RequestProfile
from sollol_proxy.routing.performance import bound_parts

EPOCH_S = 1.0
# A slot belief still growing (no wait seen yet: a lower bound) is taken to be short of the
# node's slots this often when all its believed slots are busy.
GROWING_SHORT = 0.5


def _copier() -> Callable[[NodeView, int, float], NodeView]:
    """`with_probe`, written out from NodeView's fields when this module loads (as dataclasses
    writes __init__): a new view filled slot by slot is several times faster to make than one
    passed every field through NodeView's __init__, and one is made for most candidates of
    every request. Written from the fields, it copies a field added later too."""
    kept = [f.name for f in fields(NodeView) if f.name not in ("cached_tokens", "displaced_tokens")]
    body = "".join(f"    new.{name} = view.{name}\n" for name in kept)
    source = (
        "def with_probe(view, cached, displaced):\n"
        "    new = new_view(NodeView)\n"
        f"{body}"
        "    new.cached_tokens = cached\n"
        "    new.displaced_tokens = displaced\n"
        "    return new\n"
    )
    namespace: dict[str, Any] = {"new_view": object.__new__, "NodeView": NodeView}
    exec(source, namespace)  # our own source, made from the dataclass's fields
    copy: Callable[[NodeView, int, float], NodeView] = namespace["with_probe"]
    return copy


# with_probe(view, cached, displaced): `view` with what the prompt finds in the node's slots
# (`cached` tokens) and what its slot pushes out (`displaced`).
with_probe = _copier()


def epoch_offset(name: str) -> float:
    """Where in the epoch the views of node `name` turn over (seconds)."""
    return zlib.crc32(name.encode()) / 2**32 * EPOCH_S


class Kept:
    """A node's view for a model, and what it was made from (updated in place: a request that
    finds it current allocates nothing for it)."""

    __slots__ = (
        "bound",
        "changes",
        "epoch",
        "learned",
        "name",
        "node",
        "offset",
        "options",
        "prompt",
        "slots",
        "view",
    )

    def __init__(self, name: str) -> None:
        self.name = name  # its node's (read here, not through NodeState's property)
        self.offset = epoch_offset(name)
        self.epoch = -1.0
        self.changes = self.learned = -1
        self.options: object = None
        self.prompt = -1  # the prompt tokens it was priced for; -1: it is the same for any
        self.view: NodeView | None = None
        self.slots = 0  # model_slots: what the probe sizes the node's cache with
        # The node it was last made or found for: a selector's failover list reaches the node
        # from its entry (one node per name: a reload that replaces a node clears the views).
        self.node: NodeState | None = None
        # performance.bound_parts of the view: its lower bound for any request, but the output
        self.bound: tuple[float, float, float] = (0.0, math.inf, 1.0)

    def made(self, view: NodeView, slots: int) -> None:
        """Its view is `view` now, for a node of `slots` slots (`bound` goes with the view)."""
        self.view, self.slots, self.bound = view, slots, bound_parts(view)


def _prompt_priced(view: NodeView) -> bool:
    """Does the view's estimate use its service time, which (until one is measured) depends on
    the request's prompt length? A busy model's queue, or a reload behind its requests."""
    return (view.resident or view.loading) and (
        view.model_in_flight >= view.num_parallel or not view.options_match
    )


class Views:
    def __init__(self, learner: Learner, healthy: Callable[[], list[NodeState]]) -> None:
        self._learner = learner
        self._healthy = healthy
        self._entries: dict[str, dict[str, Kept]] = {}  # model -> node -> its view
        self._epoch = -1.0
        self._demand: dict[str, float] | None = None

    def clear(self) -> None:
        """A reload: priors, limits and nodes may all have changed."""
        self._entries.clear()
        self._demand = None

    def _tick(self, now: float) -> None:
        """A new epoch: the fleet-wide demand is worked out again when next needed."""
        epoch = now // EPOCH_S
        if epoch != self._epoch:
            self._epoch, self._demand = epoch, None

    def demand(self) -> Mapping[str, float]:
        """Model -> how costly losing a loaded copy is (snapshot.demand_by_model), this epoch's."""
        if self._demand is None:
            self._demand = demand_by_model(self._healthy(), self._learner)
        return self._demand

    def kept(self, model: str) -> Mapping[str, Kept]:
        """Node name -> the entry `bases` last returned for it, for `model`."""
        return self._entries.get(model, {})

    def bases(
        self, nodes: list[NodeState], profile: RequestProfile, now: float | None = None
    ) -> list[Kept]:
        """The views of `nodes` for this request before its prompt is looked up, each with the
        slots the node is believed to have for the model (for the probe)."""
        now = time.monotonic() if now is None else now
        self._tick(now)
        learner = self._learner
        model, options, prompt = profile.model, profile.runner_options, profile.prompt_tokens
        kept = self._entries.get(model)
        if kept is None:
            kept = self._entries[model] = {}
        result = []
        version = learner.versions.get
        for node in nodes:
            name = node.config.name
            entry = kept.get(name)
            if entry is None:
                entry = kept[name] = Kept(name)
            entry.node = node
            changes, learned = node.changes, version(name, 0)
            epoch = (now + entry.offset) // EPOCH_S
            if (
                entry.changes != changes
                or entry.learned != learned
                or entry.epoch != epoch
                or (entry.prompt != -1 and entry.prompt != prompt)
                or entry.options != options
            ):
                view = node_view(node, profile, learner, 0, self.demand())
                entry.epoch, entry.changes, entry.learned, entry.options = (
                    epoch,
                    changes,
                    learned,
                    options,
                )
                entry.prompt = prompt if _prompt_priced(view) else -1
                entry.made(view, model_slots(node, model))
            result.append(entry)
        return result


def probed(
    bases: list[Kept],
    probes: Mapping[str, Probe],
    ratio: float,
    now: float,
    learner: Learner,
    profile: RequestProfile,
) -> list[NodeView]:
    """The views with what the probe found for this prompt (`ratio`: Ollama's tokens per
    estimated token). When every slot a node is believed to have is busy but admission lets
    more in (it probes for more slots), the request is priced as waiting there for the first
    of them to free, as it will if the belief is right: otherwise the node looks free and its
    cache empty, and draws the misses of a whole burst."""
    views = []
    for entry in bases:
        view = entry.view
        assert view is not None  # made by `bases`
        probe = probes.get(view.name)
        if probe is not None:
            view = with_probe(view, round(probe.cached * ratio), probe.displaced * ratio)
            if probe.full_since is not None and view.model_in_flight < view.num_parallel:
                service = learner.service_s(view.name, profile.model, profile.prompt_tokens)
                remaining = max(service - (now - probe.full_since), 0.1 * service)
                # On the copy just made, which nothing else holds: no second copy.
                view.service_s, view.slot_wait_s = service, remaining
                if view.num_parallel > entry.slots:
                    believed_right(view)
        views.append(view)
    return views


def believed_right(view: NodeView) -> None:
    """Price a node full by a belief that is still growing as the expectation of its two
    outcomes: the belief is right, and the request waits for the first slot to free and finds
    what the probe says; or the node has a slot the proxy does not know of, where the request
    starts at once, finding and pushing out nothing the proxy knows of. Priced as certain to
    wait, a request planned to find its group's prefix started in the other slot and missed
    (one to three a run on the routing benchmark, each among its slowest)."""
    right = 1.0 - GROWING_SHORT
    view.cached_tokens = round(view.cached_tokens * right)
    view.displaced_tokens *= right
    if view.slot_wait_s is not None:
        view.slot_wait_s *= right
