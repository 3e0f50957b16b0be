"""The calibration of hold waits (fleet/wait_calibration.py) and what a hold remembers of its
start (fleet/waiting.py): pure, the clock given."""

from __future__ import annotations

import pytest

from sollol_proxy.fleet.wait_calibration import ALPHA, HIGH, LOW, Calibration
from sollol_proxy.fleet.waiting import Waits


def test_the_ratio_is_one_until_a_hold_ended() -> None:
    assert Calibration().ratio("m") == 1.0


def test_waits_longer_than_expected_raise_the_ratio_by_a_moving_mean() -> None:
    calibration = Calibration()
    calibration.observe("m", expected_s=0.4, waited_s=0.6)  # 1.5
    assert calibration.ratio("m") == pytest.approx(1.0 + ALPHA * 0.5)
    for _ in range(100):
        calibration.observe("m", expected_s=0.4, waited_s=0.6)
    assert calibration.ratio("m") == pytest.approx(1.5, abs=1e-3)
    assert calibration.ratio("other") == 1.0  # per model


def test_the_ratio_is_bounded_and_tiny_expectations_are_ignored() -> None:
    calibration = Calibration()
    for _ in range(200):
        calibration.observe("long", expected_s=0.1, waited_s=5.0)
        calibration.observe("short", expected_s=1.0, waited_s=0.0)
        calibration.observe("noise", expected_s=0.001, waited_s=1.0)
    assert calibration.ratio("long") == pytest.approx(HIGH)
    assert calibration.ratio("short") == pytest.approx(LOW)
    assert calibration.ratio("noise") == 1.0


def test_a_hold_weighed_again_for_the_same_node_keeps_its_start_and_expectation() -> None:
    waits = Waits()
    first = waits.hold("a", 10.5, replacing=None, now=10.0, expected_s=0.3)
    again = waits.hold("a", 11.0, replacing=first, extended=True, now=10.5, expected_s=0.1)
    assert (again.since, again.expected_s) == (10.0, 0.3)
    elsewhere = waits.hold("b", 11.5, replacing=again, now=11.0, expected_s=0.2)
    assert (elsewhere.since, elsewhere.expected_s) == (11.0, 0.2)
    assert waits.count("a", 11.0) == 0 and waits.count("b", 11.0) == 1
