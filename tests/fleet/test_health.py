"""The per-node health state machine, with a hand-driven clock."""

from __future__ import annotations

import logging

import pytest

from sollol_proxy.config.policies import OutlierPolicy
from sollol_proxy.fleet.health import Failure, NodeHealth, State


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**policy: float) -> tuple[NodeHealth, Clock]:
    clock = Clock()
    health = NodeHealth("a", OutlierPolicy(**policy), clock)  # type: ignore[arg-type]
    health.probe_ok()
    return health, clock


def test_starts_down_until_a_probe_answers() -> None:
    health = NodeHealth("a", OutlierPolicy(), Clock())
    assert health.current() is State.DOWN and not health.admits() and not health.reachable
    health.probe_ok()
    assert health.current() is State.UP and health.admits() and health.reachable


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    health, clock = make(consecutive_failures=3, base_ejection=10)
    health.failed(Failure.SERVER_ERROR, "500")
    health.failed(Failure.RESET, "reset")
    health.succeeded()
    health.failed(Failure.TIMEOUT, "slow")
    health.failed(Failure.TIMEOUT, "slow")
    assert health.current() is State.UP
    health.failed(Failure.SERVER_ERROR, "500")
    assert health.current() is State.EJECTED and not health.admits()
    assert health.reachable  # ejected nodes still show in the fleet views
    assert health.counters.ejections == 1 and health.counters.failures == 5
    clock.now += 9.9
    assert health.current() is State.EJECTED
    clock.now += 0.2
    assert health.current() is State.HALF_OPEN and health.admits()


def test_half_open_admits_one_trial_and_its_outcome_decides() -> None:
    health, clock = make(consecutive_failures=1, base_ejection=10, max_ejection=35)
    health.failed(Failure.SERVER_ERROR, "500")
    clock.now += 10
    assert health.begin()
    assert not health.admits() and not health.begin()  # one trial at a time
    health.failed(Failure.SERVER_ERROR, "500 again")
    assert health.current() is State.EJECTED  # for twice as long
    clock.now += 19.9
    assert health.current() is State.EJECTED
    clock.now += 0.1
    assert health.begin()
    health.abandoned()  # the client left: another request may try
    assert health.begin()
    health.failed(Failure.RESET, "reset")
    clock.now += 35  # capped at max_ejection (not 40)
    assert health.begin()
    health.succeeded()
    assert health.current() is State.UP and health.admits()


def test_ejections_are_forgiven_after_max_ejection_up() -> None:
    health, clock = make(consecutive_failures=1, base_ejection=10, max_ejection=100)
    for _ in range(2):
        health.failed(Failure.SERVER_ERROR, "500")
        clock.now += 1000
        assert health.begin()
        health.succeeded()
    assert health.streak == 2
    clock.now += 100
    health.failed(Failure.SERVER_ERROR, "500")
    assert health.streak == 1 and health.until == clock.now + 10


def test_connection_failure_takes_the_node_down_and_a_trial_brings_it_back() -> None:
    health, clock = make(base_ejection=10)
    health.failed(Failure.CONNECT, "cannot connect")
    assert health.current() is State.DOWN and not health.reachable
    # Reachable again after one drop-out (a restart): a trial at once, not in 10 s.
    health.probe_ok()
    assert health.current() is State.HALF_OPEN and health.begin()
    health.failed(Failure.RESET, "connection reset")  # the trial fails: out for longer
    clock.now += 1
    health.probe_failed("timed out")
    assert health.current() is State.DOWN
    health.probe_ok()  # a second drop-out in a row: its ejection is served whole
    assert health.current() is State.EJECTED
    clock.now += 19
    assert health.current() is State.HALF_OPEN


def test_a_node_that_drops_out_of_probes_comes_back_through_a_trial() -> None:
    health, clock = make(base_ejection=10)
    health.probe_failed("cannot connect")
    health.probe_failed("cannot connect")
    assert health.current() is State.DOWN and health.counters.ejections == 1
    health.probe_ok()
    assert health.current() is State.HALF_OPEN and health.begin()
    health.succeeded()
    assert health.current() is State.UP
    # Dropping out again soon after (flapping): this time the ejection is served whole.
    health.probe_failed("cannot connect")
    health.probe_ok()
    assert health.current() is State.EJECTED and health.reason.endswith("not over yet")
    clock.now += 20
    assert health.current() is State.HALF_OPEN


def test_busy_is_a_short_cool_down_never_for_the_last_node() -> None:
    health, clock = make(busy_cooldown=2)
    health.busy("queue full", others_available=False)
    assert health.current() is State.UP  # the last node keeps taking work
    health.busy("queue full", others_available=True)
    assert health.current() is State.BUSY and not health.admits()
    assert health.counters.ejections == 0 and health.counters.busy == 2
    clock.now += 2
    assert health.current() is State.UP


def test_busy_answer_to_a_trial_means_alive() -> None:
    health, clock = make(consecutive_failures=1, base_ejection=1)
    health.failed(Failure.RESET, "reset")
    clock.now += 1
    assert health.begin()
    health.busy("queue full", others_available=True)
    assert health.current() is State.BUSY and not health.trial
    clock.now += 5
    assert health.current() is State.UP


def test_failures_on_a_node_already_out_do_not_grow_its_ejection() -> None:
    health, _ = make(consecutive_failures=1, base_ejection=10)
    health.failed(Failure.SERVER_ERROR, "500")
    until = health.until
    health.failed(Failure.SERVER_ERROR, "500 (pinned)")
    assert health.until == until and health.streak == 1
    health.failed(Failure.CONNECT, "cannot connect")
    assert health.current() is State.DOWN and health.streak == 1


def test_each_state_change_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sollol.health")
    health, clock = make(consecutive_failures=1, base_ejection=1)
    caplog.clear()
    health.failed(Failure.SERVER_ERROR, "500")
    for _ in range(5):
        health.admits()
    clock.now += 1
    for _ in range(5):
        health.admits()
    assert [r.getMessage().split(":")[1].strip() for r in caplog.records] == [
        "up -> ejected",
        "ejected -> half_open",
    ]


def test_snapshot_is_small_and_bounded() -> None:
    health, _ = make(consecutive_failures=1, base_ejection=10)
    health.failed(Failure.SERVER_ERROR, "500")
    snap = health.snapshot()
    assert snap["state"] == "ejected" and snap["for_s"] == 10 and snap["ejections"] == 1
    assert {s.value for s in State} == {"up", "down", "ejected", "busy", "half_open"}


def test_answers_that_break_mid_stream_count_as_failures_in_a_row() -> None:
    health, clock = make(consecutive_failures=2, base_ejection=1)
    for _ in range(2):
        health.answered()  # first bytes came ...
        health.failed(Failure.RESET, "stream broke")  # ... then the stream broke
    assert health.current() is State.EJECTED and health.consecutive == 0
    clock.now += 1
    assert health.begin()
    health.answered()  # a trial passes with its first bytes ...
    assert health.current() is State.UP
    health.failed(Failure.RESET, "stream broke")  # ... but on probation: one failure ejects
    assert health.current() is State.EJECTED and health.streak == 2
    clock.now += 2
    assert health.begin()
    health.succeeded()  # a whole answer: the count starts afresh
    health.failed(Failure.RESET, "stream broke")
    assert health.current() is State.UP


def test_cut_short_ends_an_ejection_or_cool_down_but_not_down() -> None:
    health, _ = make(consecutive_failures=1, base_ejection=60)
    health.failed(Failure.SERVER_ERROR, "500")
    assert health.cut_short() and health.current() is State.HALF_OPEN
    assert health.begin() and not health.cut_short()  # one trial at a time, still
    health.failed(Failure.SERVER_ERROR, "500")
    health.probe_failed("cannot connect")
    assert not health.cut_short() and health.current() is State.DOWN
    busy, _ = make()
    busy.busy("queue full", others_available=True)
    assert busy.cut_short() and busy.current() is State.UP
