"""What an unmeasured node is believed to be from its peers, and the lift of a growing belief
to what a peer proved."""

from __future__ import annotations

from sollol_proxy.fleet.beliefs import NodeBeliefs, SlotBelief
from sollol_proxy.fleet.peers import Peers
from tests.fleet.test_beliefs import learn, node


def test_an_unmeasured_model_is_believed_like_what_is_known() -> None:
    peers = Peers()
    a, b, c = node("a"), node("b"), node("c")
    for member in (a, b, c):
        peers.join(member)
    assert a.prior("m") == 1  # nothing measured anywhere
    learn(a.slot("m", forced=False), 4)
    a.note("m", None)
    a.changed()
    assert b.prior("m") == 4 and b.prior("other") == 4  # the same model, then any model
    learn(b.slot("other", forced=False), 2)
    b.changed()
    assert b.prior("m") == 2  # its own other models first: OLLAMA_NUM_PARALLEL is per node
    fresh = c.slot("m", forced=False)
    assert fresh.estimator.believed == 4 and fresh.estimator.source == "default"
    learn(a.slot("m", forced=False), 8)  # a learns more: the unmeasured belief follows
    a.changed()
    assert fresh.estimator.believed == 8
    assert c.slot("embed", forced=True).estimator.believed == 1  # forced: never a peer's
    peers.leave(a)
    assert c.prior("x") == 2


def test_a_node_that_showed_no_eviction_holds_what_its_peers_hold() -> None:
    peers = Peers()
    a, b = node("a"), node("b")
    peers.join(a)
    peers.join(b)
    assert (peers.max_loaded, peers.vram_bytes) == (None, None)
    a.observe_ps({"x": {"size_vram": 4}, "y": {"size_vram": 4}})
    a.observe_ps({"y": {"size_vram": 4}, "z": {"size_vram": 4}})  # x evicted for z
    assert (a.memory.max_loaded, a.memory.vram_bytes) == (2, 11)
    assert (peers.max_loaded, peers.vram_bytes) == (2, 11)
    assert b.memory.max_loaded is None  # b's own belief stays unknown; capacity.py reads peers


def growing_peers(settle: bool) -> tuple[NodeBeliefs, SlotBelief, SlotBelief]:
    """Nodes a, b, c of one fleet; b and c ran one request alone (proving one slot, a lower
    bound); c then waited at two when `settle` (it has one slot: not growing any more)."""
    peers = Peers()
    a, b, c = node("a"), node("b"), node("c")
    for member in (a, b, c):
        peers.join(member)
    growing, other = b.slot("m", forced=False), c.slot("m", forced=False)
    for belief in (growing, other):
        belief.fresh = False
        belief.estimator.finished(1, 0.0, now=0.0)
    if settle:
        other.estimator.finished(2, 1.0, now=0.0, total_s=2.0)
        assert not other.estimator.growing
    assert growing.estimator.growing
    return a, growing, other


def test_a_growing_belief_is_raised_to_what_a_peer_proved() -> None:
    a, growing, _ = growing_peers(settle=False)
    proof = a.slot("m", forced=False)
    proof.fresh = False
    a.note("m", proof.estimator.finished(2, 0.0, now=0.0))  # a ran two at once
    assert growing.estimator.believed == 2 and growing.estimator.source == "probing"
    # A guess: two waits at it take it back, and it is not raised again.
    for _ in range(2):
        growing.estimator.finished(2, 1.0, now=1.0, total_s=2.0)
    a.changed()
    assert growing.estimator.believed == 1 and not growing.estimator.growing


def test_once_a_node_showed_fewer_slots_growing_beliefs_are_not_raised() -> None:
    # c waited at two where a ran two: the nodes' OLLAMA_NUM_PARALLEL differ, and b raised to
    # a's slots would send those it may not have to wait inside Ollama.
    a, growing, settled = growing_peers(settle=True)
    proof = a.slot("m", forced=False)
    proof.fresh = False
    a.note("m", proof.estimator.finished(2, 0.0, now=0.0))
    assert growing.estimator.believed == 1 and growing.estimator.limit == 2
    assert settled.estimator.believed == 1  # its own wait says fewer


def test_an_unmeasured_node_is_believed_to_have_the_fewest_slots_of_its_peers() -> None:
    peers = Peers()
    members = [node(name) for name in "abcd"]
    for member in members:
        peers.join(member)
    for member, slots in zip(members, (4, 1, 2), strict=False):
        learn(member.slot("m", forced=False), slots)
    peers.learned()
    fresh = members[3].slot("m", forced=False).estimator
    assert (fresh.believed, fresh.source) == (1, "default")
