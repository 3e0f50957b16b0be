"""Reservations (fleet/reservations.py): claimed, run out, and what is kept for them."""

from __future__ import annotations

from sollol_proxy.fleet.reservations import RESERVATION_S, Reservations
from tests.fleet.test_prompt_cache import SYSTEM, chat


def test_a_reservation_is_claimed_once_or_runs_out() -> None:
    reservations: Reservations[str] = Reservations()
    claimed, unclaimed = chat(SYSTEM, "claimed"), chat(SYSTEM, "unclaimed")
    reservations.hold(claimed, "first", now=0.0)
    reservations.hold(unclaimed, "second", now=0.5)
    assert reservations.claim(claimed) == "first" and reservations.claim(claimed) is None
    assert reservations.expired(RESERVATION_S - 0.1) == []
    assert reservations.expired(RESERVATION_S + 0.6) == ["second"]
    assert reservations.claim(unclaimed) is None and reservations.expired(100.0) == []


def test_claimed_reservations_are_not_kept_once_none_is_left() -> None:
    # Each request reserves its slot and claims it at once (the usual case): what is kept to
    # run reservations out in order does not grow with the requests.
    reservations: Reservations[int] = Reservations()
    for i in range(1000):
        keys = chat(SYSTEM, f"question {i}")
        reservations.hold(keys, i, now=i * 0.001)
        assert reservations.claim(keys) == i
        assert reservations.expired(i * 0.001) == []
    assert len(reservations) <= 1
