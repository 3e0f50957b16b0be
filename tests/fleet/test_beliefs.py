"""What a node is believed to run: ends and overlap, resets (a new runner, a dropped connection),
reconfiguration (its peers: test_peers.py)."""

from __future__ import annotations

from sollol_proxy.config import NodeConfig
from sollol_proxy.fleet import capacity
from sollol_proxy.fleet.beliefs import (
    ENDS_KEPT,
    HEARD_LAG_S,
    PROOF_WAIT_S,
    NodeBeliefs,
    SlotBelief,
)
from sollol_proxy.fleet.estimator import CapacityEstimator
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.peers import Peers
from sollol_proxy.wire.timings import Timings


def node(name: str, **settings: object) -> NodeBeliefs:
    return NodeBeliefs(NodeConfig(url=f"http://{name}:1", name=name, **settings))  # type: ignore[arg-type]


def learn(belief: SlotBelief, slots: int) -> None:
    """Observations that prove `slots` and end slow start with a wait above them."""
    belief.fresh = False
    belief.estimator.reset("a test starts from one slot", 1)
    belief.estimator.finished(slots, 0.0, now=0.0)
    belief.estimator.finished(slots + 1, 1.0, now=0.0, total_s=2.0)


def test_overlap_counts_the_requests_that_ended_before_the_slot() -> None:
    belief = SlotBelief(CapacityEstimator(), forced=False)
    for _ in range(4):
        belief.dispatched(now=0.0)
    belief.ended(1.0, probe=False)  # before the slot: it did not run beside the new one
    belief.ended(3.0, probe=False)  # after it: it did
    assert belief.running == 2
    assert belief.overlap(4, dispatched_at=0.5, slot_at=2.0) == 3
    assert belief.overlap(4, dispatched_at=0.5, slot_at=0.6) == 4
    assert belief.overlap(1, dispatched_at=0.5, slot_at=5.0) == 1  # never below itself


def test_with_too_short_a_history_the_overlap_proves_nothing() -> None:
    belief = SlotBelief(CapacityEstimator(), forced=False)
    for i in range(ENDS_KEPT):
        belief.dispatched(now=0.0)
        belief.ended(10.0 + i, probe=False)
    assert belief.overlap(8, dispatched_at=5.0, slot_at=9.0) == 1


def test_a_probe_lets_no_other_probe_in_until_it_ends() -> None:
    belief = SlotBelief(CapacityEstimator(prior=1), forced=False)
    learn(belief, 2)
    estimator = belief.estimator
    assert (estimator.believed, estimator.limit) == (2, 2)  # the failed probe backed off
    for _ in range(2):
        belief.dispatched(now=31.0)  # probe_every seconds after the failed probe
    assert estimator.limit == 3
    in_flight, probe = belief.dispatched(now=31.0)
    assert (in_flight, probe, estimator.limit) == (3, True, 2)
    belief.ended(2.0, probe=True)
    assert estimator.limit == 3


def test_the_other_replicas_slots_count_as_in_flight() -> None:
    # Replicas sharing slots: one request of this replica, granted while the others held two
    # slots there, ran with three in flight; a wait-free run proves three, a probe is one.
    belief = SlotBelief(CapacityEstimator(prior=1), forced=False)
    learn(belief, 2)
    estimator = belief.estimator
    in_flight, probe = belief.dispatched(now=31.0, beside=2)
    assert (in_flight, probe, belief.running) == (3, True, 1)
    belief.ended(31.1, probe=True)
    estimator.finished(in_flight, 0.0, now=31.2)
    assert estimator.believed == 3


def test_other_replicas_ends_heard_since_the_slot_was_asked_for_count_as_before_it() -> None:
    # Redis counted three slots of other replicas when this one's was asked for (at 0.4); one
    # ended before the request was sent, one is heard to end just after its slot (its release
    # reached Redis late), one long after: only one of the three surely ran beside it.
    belief = SlotBelief(CapacityEstimator(), forced=False)
    belief.dispatched(now=0.5, beside=3)
    for at in (0.45, 2.0 + HEARD_LAG_S / 2, 5.0):
        belief.heard_ended(at)
    assert belief.overlap(4, dispatched_at=0.5, slot_at=2.0, asked=0.4) == 2
    assert belief.overlap(4, dispatched_at=0.5, slot_at=2.0) == 3  # no grant: from dispatch


def test_a_runner_leaving_ps_resets_its_belief_but_keeps_the_value() -> None:
    beliefs = node("a")
    learn(beliefs.slot("m", forced=False), 4)
    assert beliefs.slots["m"].estimator.source == "learned"
    beliefs.observe_ps({"m": {"size_vram": 10}})
    beliefs.observe_ps({})
    estimator = beliefs.slots["m"].estimator
    # Still a lower bound once learned: probing (growing), so peers' proofs lift it at once.
    assert (estimator.believed, estimator.source, estimator.limit) == (4, "probing", 5)
    assert estimator.growing


def test_an_answer_sent_after_a_dropped_connection_restarts_learning() -> None:
    a, b = node("a"), node("b")
    peers = Peers()
    for n in (a, b):
        peers.join(n)
    learn(a.slot("m", forced=False), 2)
    learn(b.slot("m", forced=False), 1)
    estimator = b.slots["m"].estimator
    b.dropped(10.0, "connection reset")
    b.answered(9.0)  # sent before the drop: the old process answering, nothing new
    assert (estimator.believed, estimator.source) == (1, "learned")
    b.answered(10.5)  # sent after it: a new `ollama serve`, maybe with other slots
    # Growing from what it had, lifted to what its peer proved; two more until the first wait.
    assert (estimator.believed, estimator.source, estimator.limit) == (2, "probing", 4)
    b.answered(11.0)  # once only
    assert estimator.believed == 2


def test_a_reload_that_sets_num_parallel_replaces_the_learned_beliefs() -> None:
    beliefs = node("a")
    learn(beliefs.slot("m", forced=False), 4)
    beliefs.reconfigure(NodeConfig(url="http://a:1", name="a", num_parallel=2, max_loaded_models=1))
    estimator = beliefs.slot("m", forced=False).estimator
    assert (estimator.believed, estimator.limit, estimator.source) == (2, 2, "configured")
    assert beliefs.memory.max_loaded == 1
    beliefs.reconfigure(NodeConfig(url="http://a:1", name="a"))
    assert beliefs.slot("m", forced=False).estimator.source == "default"
    assert beliefs.memory.max_loaded is None


def test_a_load_where_the_model_was_loaded_restarts_slow_start() -> None:
    state = NodeState(NodeConfig(url="http://a:1", name="a"))
    belief = state.beliefs.slot("m", forced=False)
    learn(belief, 4)
    assert (belief.estimator.source, belief.estimator.limit) == ("learned", 4)
    loaded = Timings(
        total_s=1.5, load_s=1.0, prompt_tokens=5, prompt_s=0.1, output_tokens=9, output_s=0.4
    )
    # Sent while the model was not loaded there: the load was expected, the runner known.
    capacity.learn(state, "m", belief, 1, 0.0, None, loaded, False, 2.0, cold=True)
    assert (belief.estimator.source, belief.estimator.believed) == ("learned", 4)
    # Sent to a loaded model, and it loaded: a new runner, whose slots are found again.
    capacity.learn(state, "m", belief, 1, 3.0, None, loaded, False, 5.0, cold=False)
    assert (belief.estimator.source, belief.estimator.believed) == ("probing", 4)
    assert belief.estimator.limit == 5


def burst(state: NodeState, slots: int, sent: int, first: list[int]) -> SlotBelief:
    """`sent` requests sent within a millisecond to a node with `slots` slots; they reached it
    in another order: those numbered in `first` (1-based, as sent) took the slots, the others
    waited 0.1 s for them. Answers come in the order the node finished them."""
    belief = state.beliefs.slot("m", forced=False)
    belief.fresh = False
    sent_at = [i * 0.0001 for i in range(sent)]
    for at in sent_at:
        belief.dispatched(at)
    order = first + [i for i in range(1, sent + 1) if i not in first]
    for position, number in enumerate(order):
        wait = 0.0 if position < slots else 0.1
        end = 0.1 + wait + position * 0.0001
        timings = Timings(
            total_s=end - sent_at[number - 1],
            load_s=0.0,
            prompt_tokens=5,
            prompt_s=0.01,
            output_tokens=9,
            output_s=end - sent_at[number - 1] - 0.01 - wait,
        )
        belief.ended(end, probe=False)
        capacity.learn(state, "m", belief, number, sent_at[number - 1], None, timings, False, end)
    return belief


def test_a_burst_that_reached_the_node_out_of_order_proves_only_its_slots() -> None:
    # The last four sent ran at once while the first four waited: the eighth counted seven
    # before it, but four of them were not in a slot when it ran.
    state = NodeState(NodeConfig(url="http://a:1", name="a"))
    assert burst(state, slots=4, sent=8, first=[5, 6, 7, 8]).estimator.believed == 4
    state = NodeState(NodeConfig(url="http://a:1", name="a"))
    assert burst(state, slots=4, sent=8, first=[8, 2, 6, 1]).estimator.believed == 4


def test_a_burst_that_all_ran_at_once_proves_all_of_it() -> None:
    state = NodeState(NodeConfig(url="http://a:1", name="a"))
    belief = burst(state, slots=8, sent=8, first=[8, 7, 6, 5, 4, 3, 2, 1])
    assert belief.estimator.believed == 8


def test_a_proof_waits_for_those_sent_before_it_then_counts_the_unknown_as_waiting() -> None:
    belief = SlotBelief(CapacityEstimator(), forced=False)
    belief.fresh = False
    for at in (0.0, 0.001, 0.002):
        belief.dispatched(at)
    assert belief.ran_free(0.002, 3, now=0.5) is None  # two sent before it are not settled
    assert belief.estimator.believed == 1
    assert belief.settled(0.0, None, now=0.6) is None  # one of them is still unknown
    change = belief.ran_free(0.001, 2, now=0.7)  # ... now known: both proofs are made
    assert change is not None and belief.estimator.believed == 3
    belief = SlotBelief(CapacityEstimator(), forced=False)
    for at in (0.0, 0.001):
        belief.dispatched(at)
    belief.ran_free(0.001, 2, now=0.5)
    assert belief.estimator.believed == 1
    belief.settled(0.0, 0.3, now=0.9)  # it waited past the proof's dispatch: one slot proven
    assert belief.estimator.believed == 1
    for at in (1.0, 1.001, 1.002):
        belief.dispatched(at)
    belief.ran_free(1.001, 2, now=1.5)
    # The one sent before it is still unknown when another one settles, too long after: it
    # counted as waiting.
    belief.settled(1.002, None, now=1.5 + PROOF_WAIT_S)
    assert belief.estimator.believed == 1 and not belief._proofs
