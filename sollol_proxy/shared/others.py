"""What this replica knows of the other replicas' slots and of the belief they share (a mixin of
`slots.SharedSlots`): the room the others leave on a node as last heard (it steers the choice of
node; Redis always decides), the bound a grant is asked with, the belief this replica tells
Redis, and what the grants' answers and the `ended` events tell it back."""

from __future__ import annotations

import time
from typing import Any

from sollol_proxy.admission.admission import Admission
from sollol_proxy.fleet.capacity import model_room, slot_belief
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.shared.lease_ops import Bound
from sollol_proxy.shared.link import Link
from sollol_proxy.shared.parking import FRESH_S


class Others:
    _link: Link
    _admission: Admission
    _remote: dict[tuple[str, str], tuple[int, float]]  # others' slots, when heard
    _nodes: dict[str, NodeState]  # the nodes this replica's requests went to, by name
    _told: dict[tuple[str, str], str]  # this replica's own belief, as Redis has it (`_tell`)
    _shared: dict[tuple[str, str], int]  # the replicas' shared one, as last heard

    def _room(self, node: NodeState, model: str) -> bool:
        """Whether the other replicas, as last heard, leave this replica a slot there (beside
        the slots its own table holds, granted or about to be)."""
        heard = self._remote.get((node.name, model))
        if heard is None or time.monotonic() - heard[1] > FRESH_S:
            return True
        local = self._admission.slots.in_use(node.name).get(model, 0)
        capacity, learn = self._capacity(node.name, model)
        bound = self._shared.get((node.name, model), capacity) + 1 if learn else capacity
        return heard[0] + local < bound

    def _capacity(self, node: str, model: str) -> Bound:
        """The bound Redis applies: the node's configured slots, or (learned) the belief all
        replicas share (this replica's own until one is shared) plus one probe margin."""
        known = self._nodes.get(node)
        if known is None:  # handed a slot of a node this replica never sent to: Redis knows
            return 0, True
        belief = slot_belief(known, model)
        if belief is None or belief.estimator.fixed is not None:
            return model_room(known, model), False
        return belief.estimator.believed, True

    def _tell(self, node: NodeState, model: str) -> str:
        """This replica's belief of `node`'s slots for `model` if it learned it (not its start
        value) and it changed since Redis last had it, else "". Told as `believed`, or
        `believed/upper` once waits bounded it (`CapacityEstimator.upper`): a belief nothing
        waited above is only a lower bound, and does not hold the shared belief down
        (`scripts._BOUND`)."""
        belief = slot_belief(node, model)
        if belief is None or belief.estimator.source in ("configured", "default"):
            return ""
        estimator = belief.estimator
        told = str(estimator.believed)
        if estimator.upper is not None:
            told += f"/{estimator.upper}"
        if self._told.get((node.name, model)) == told:
            return ""
        self._told[(node.name, model)] = told
        return told

    def _unsure(self, node: str, model: str, others: int) -> int:
        """Of the `others` slots the other replicas held on `node` for `model` when a request
        of this replica was granted its own there, those that may have been waiting inside
        Ollama rather than running: the ones beyond what this replica's requests there leave
        under the shared belief. The bound lets one request more than the belief in (the probe
        margin), and that one may be another replica's, waiting for a slot while this one runs:
        counted in its proof, it proved a slot too many, and the shared belief of a node of 4
        slots climbed to 5 or 6 once a single replica's proof could raise it
        (`scripts._BOUND`). Above the shared belief, a replica proves with its own requests, as
        one replica does; a wait still counts them all (fleet/capacity.py, `learn`)."""
        shared = self._shared.get((node, model))
        if shared is None:
            return 0
        own = self._admission.slots.in_use(node).get(model, 0)
        return max(0, others - max(shared - own, 0))

    def _heard(self, node: str, model: str, others: int, shared: str) -> None:
        """What the other replicas hold on `node` for `model` (until a release hands a slot
        here, that much is not free here), and the slots they all believe it has: adopted."""
        self._remote[(node, model)] = (others, time.monotonic())
        known = self._nodes.get(node)
        belief = None if known is None or not shared.isdigit() else slot_belief(known, model)
        if known is None or belief is None or belief.estimator.fixed is not None:
            return
        self._shared[(node, model)] = int(shared)
        # Only upwards: this replica's own waits and proofs (its own requests in flight only)
        # keep counting in the median through its own belief.
        if belief.estimator.believed < int(shared):
            belief.fresh = False
            change = belief.estimator.adopt(int(shared), "learned by another replica")
            known.beliefs.note(model, change)

    def _heard_ended(self, event: dict[str, Any]) -> None:
        """Another replica's request on a node ended: this replica's proofs stop counting it
        among the slots held beside theirs (fleet/beliefs.py, `overlap`)."""
        node, model = event.get("node"), event.get("model")
        if event.get("by") == self._link.replica or not isinstance(model, str):
            return
        known = self._nodes.get(node) if isinstance(node, str) else None
        belief = None if known is None else slot_belief(known, model)
        if belief is not None:
            belief.heard_ended(time.monotonic())
