"""Sub-batch sizes (pure): the first round by speed among the free nodes, then shrinking pieces,
within the bounds; failed pieces come back first; a job's batches by speed and what is left."""

from __future__ import annotations

import itertools

from sollol_proxy.embed.split import Partition, job_batch_size, should_split


def _drain(partition: Partition, order: str) -> list[tuple[str, range]]:
    taken = []
    for node in itertools.cycle(order):
        span = partition.take(node)
        if span is None:
            return taken
        taken.append((node, span))
    raise AssertionError("unreachable")


def test_every_input_is_handed_out_once_in_contiguous_pieces() -> None:
    taken = _drain(Partition(512, dict.fromkeys("abcd", 1.0), frozenset("abcd"), 8, 256), "abcd")
    covered = sorted(i for _, span in taken for i in span)
    assert covered == list(range(512))
    assert all(8 <= len(span) <= 256 or span.stop == 512 for _, span in taken)


def test_the_first_round_follows_the_learned_speeds_of_the_free_nodes() -> None:
    partition = Partition(
        400, {"fast": 3.0, "slow": 1.0, "busy": 4.0}, frozenset({"fast", "slow"}), 1, 1000
    )
    assert len(partition.take("fast") or ()) == 225  # 3/4 of 400 x 3/4 of the free speed
    assert len(partition.take("slow") or ()) == 75
    # a node that was busy at the start only gets a guided piece of what is left: 100 x 4/8 / 2
    assert len(partition.take("busy") or ()) == 25


def test_unmeasured_nodes_count_as_the_average_and_pieces_shrink() -> None:
    partition = Partition(1000, {"a": 2.0, "b": 0.0}, frozenset({"a", "b"}), 4, 10_000)
    first = [len(partition.take(n) or ()) for n in "ab"]
    assert first == [375, 375]  # b is taken to be as fast as the measured average
    later = [len(partition.take(n) or ()) for n in "abab"]
    assert later == sorted(later, reverse=True) and later[0] < first[0]


def test_bounds_and_give_back() -> None:
    partition = Partition(100, {"a": 1.0}, frozenset({"a"}), 10, 20)
    first = partition.take("a")
    assert first == range(0, 20)  # the first round wanted 75, max_batch says 20
    partition.give_back(first)
    assert partition.left == 100
    assert partition.take("a") == range(0, 20)  # the failed piece, first and whole
    assert Partition(0, {"a": 1.0}, frozenset({"a"}), 1, 1).take("a") is None


def test_when_a_split_helps() -> None:
    assert should_split(32, 2, 32)
    assert not should_split(31, 4, 32)
    assert not should_split(1000, 1, 32)  # one node: nothing to spread over


def test_job_batches_are_a_few_seconds_of_a_node_and_smaller_at_the_end() -> None:
    assert job_batch_size(0.0, 0.0, 10_000, 16, 256, 2.0) == 16  # not measured yet
    assert job_batch_size(50.0, 200.0, 10_000, 16, 256, 2.0) == 100  # 2 s at 50 docs/s
    assert job_batch_size(500.0, 2000.0, 10_000, 16, 256, 2.0) == 256  # capped
    assert job_batch_size(50.0, 200.0, 100, 16, 256, 2.0) == 16  # near the end: its share
