"""Slots handed to this replica by a release or a grant (`scripts.RELEASE`, `hand_over`), until
one of its requests takes them: a mixin of `leases.Leases`.

A release hands the freed slot, inside its script, to the most urgent waiter of any replica: the
slot is counted as that replica's at once and the replica is told (the release's answer, or the
event channel), so waiters never race for it. Such a slot is `reserved` here until one of this
replica's requests takes it without asking Redis (`take`; Redis hears of it with the next
operation that goes anyway), or a grant of this replica takes it in Redis; one nobody takes
within `RESERVE_S` is given back (and handed on).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from sollol_proxy.shared.lease_ops import Handed, Take
from sollol_proxy.shared.link import Link

# A slot handed to this replica that none of its requests took within this is given back.
RESERVE_S = 0.5
# A handed slot taken (`Take`) waits longer than `leases.LAZY_S` for a trip to ride on: the
# request that took it holds that slot, so its own release (or any grant meanwhile) carries it.
# At LAZY_S, 0.01 trips per request below capacity carried only takes (`bench replicas`, three
# replicas). Until it is heard, Redis counts the slot as handed and not running (a proof beside
# it errs low); the bound stays well within the hand entry's expiry (`scripts.HAND_TTL_MS`).
TAKE_S = 1.0


class HandedSlots:
    _link: Link
    _handed: Handed  # told that a slot was handed here for a waiter
    # A slot of (model, node) left free for this replica's own waiters (`leases.Leases._own`).
    _own: Callable[[str, str, bool, bool], None]
    mine: Counter[tuple[str, str]]  # the slots this replica holds, as Redis should count them
    # Slots handed to this replica (counted in `mine`) that no request holds yet: the waiters
    # they were handed for, per node and model.
    reserved: dict[tuple[str, str], list[str]]
    _asking: set[str]  # waiters whose grant is on its way (it takes theirs)
    _taken: set[str]  # waiters whose grant took theirs before it was heard of
    promised: dict[str, str]  # a woken request -> the waiter whose slot it takes
    waiters: dict[str, str]  # registered waiter -> model
    # Handed slots not taken yet -> the other replicas' slots beside them, and since when.
    beside: dict[str, tuple[int, float]]
    # Of those, the ones this replica's own release handed its parked request: Redis keeps no
    # hand entry for them (the request takes them here at once; one it does not take is given
    # back as a plain lease). Insertion-ordered keys, values unused.
    _direct: dict[str, None]
    handed: int
    taken: int
    returned: int

    # The writer's own operations (`leases.Leases`): queue one, forget a waiter, give back a
    # lease (`reserve`: the waiter a slot handed and never taken was for).
    _push: Callable[..., None]
    forget: Callable[[str, str], None]
    release: Callable[..., None]

    def take(self, node: str, model: str, waiter: str) -> tuple[int, float] | None:
        """A request with a local slot on `node` takes a slot handed to this replica there, if
        there is one (its own, the one promised to it, or one nobody else was promised): no
        round trip (Redis hears of it with the next one). Returns the other replicas' slots
        beside it when it was handed, and when (None: no slot to take)."""
        key = (node, model)
        ids = self.reserved.get(key)
        promised = self.promised.pop(waiter, None)
        if not ids:
            return None
        rid = promised if promised in ids else waiter if waiter in ids else None
        if rid is None:
            spoken = set(self.promised.values()) | self._asking
            rid = next((r for r in ids if r not in spoken), None)
            if rid is None:
                return None
        beside = self.beside.pop(rid, (0, time.monotonic()))
        direct = rid in self._direct  # no hand entry in Redis to take
        self._reserve_gone(key, rid)
        self.taken += 1
        if not direct and self._link.up:
            self._push(Take(node, model, rid), lazy=TAKE_S)
        self.forget(waiter, model)
        return beside

    def _reserve_gone(self, key: tuple[str, str], rid: str) -> None:
        ids = self.reserved[key]
        ids.remove(rid)
        self.beside.pop(rid, None)
        self._direct.pop(rid, None)
        if not ids:
            del self.reserved[key]

    def unclaimed(self, model: str, waiter: str, declined: set[str]) -> str | None:
        """A node where a slot handed to this replica for `model` waits, that `waiter` may take
        (handed for it, or for nobody waiting any more), other than those it `declined`:
        promised to it."""
        spoken = set(self.promised.values()) | self._asking
        for (node, m), ids in self.reserved.items():
            if m == model and waiter in ids and node not in declined:
                return node
        for (node, m), ids in self.reserved.items():
            if m != model or node in declined:
                continue
            rid = next((r for r in ids if r not in spoken), None)
            if rid is not None:
                self.promised[waiter] = rid
                return node
        return None

    def handed_in(
        self,
        node: str,
        model: str,
        waiter: str,
        held: int = 0,
        hand: int = 0,
        kept: bool = False,
        direct: bool = False,
    ) -> None:
        """Redis counted a slot of `node` as this replica's, for `waiter`, when all replicas
        held `held` slots there, `hand` of them handed to the other replicas' waiters and not
        taken yet (`kept`: by the release of a local slot kept for that waiter,
        `parking._pass_on`; `direct`: by this replica's own release, with no `hand` entry in
        Redis to take or give back)."""
        key = (node, model)
        self.mine[key] += 1
        self.handed += 1
        self.waiters.pop(waiter, None)
        if waiter in self._taken:  # its own grant took it already
            self._taken.discard(waiter)
            if kept:  # nor is the local slot kept for it needed
                self._own(model, node, False, True)
            return
        # The other replicas' slots, less those handed to their waiters, ran beside the request
        # that takes it (its proof: fleet/beliefs.py), as far as this replica can tell now.
        self.beside[waiter] = (max(held - self.mine[key] - hand, 0), time.monotonic())
        self.reserved.setdefault(key, []).append(waiter)
        if direct:
            self._direct[waiter] = None
        asyncio.get_running_loop().call_later(RESERVE_S, self._unclaimed, node, model, waiter)
        self._handed(node, model, waiter, kept)

    def _unclaimed(self, node: str, model: str, rid: str) -> None:
        key = (node, model)
        if rid not in self.reserved.get(key, ()):
            return
        if rid in self._asking:  # its grant may take it in Redis: see again after that
            asyncio.get_running_loop().call_later(RESERVE_S, self._unclaimed, node, model, rid)
            return
        direct = rid in self._direct
        self._reserve_gone(key, rid)
        self.returned += 1
        for woken in [w for w, r in self.promised.items() if r == rid]:
            del self.promised[woken]  # it asks Redis when it comes
        if direct:  # a lease like any other, with no hand entry to give back
            self.release(node, model)
        else:
            self.release(node, model, reserve=rid)
