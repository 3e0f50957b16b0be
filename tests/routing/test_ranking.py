"""A ranking's entries are made on first read, once each, in order, and read like a list's."""

from __future__ import annotations

import pytest

from sollol_proxy.routing.ranking import Ranking


def test_entries_are_made_in_order_once_each_when_first_read() -> None:
    asked: list[int] = []

    def make(i: int) -> str:
        asked.append(i)
        return f"entry {i}"

    ranking = Ranking(5, make)
    assert len(ranking) == 5 and ranking.made == 0 and not asked
    assert ranking[2] == "entry 2" and asked == [0, 1, 2]  # the ones before it first
    assert ranking[0] == "entry 0" and ranking[-1] == "entry 4" and asked == [0, 1, 2, 3, 4]
    assert ranking[1:3] == ["entry 1", "entry 2"]
    assert list(ranking) == [f"entry {i}" for i in range(5)] and len(asked) == 5
    with pytest.raises(IndexError):
        ranking[5]
    with pytest.raises(IndexError):
        ranking[-6]


def test_iteration_stops_making_entries_when_the_reader_stops() -> None:
    ranking = Ranking(1000, lambda i: i)
    assert any(i == 1 for i in ranking)
    assert ranking.made == 2
    assert 7 in ranking and ranking.made == 8
    assert ranking.index(9) == 9 and ranking.made == 10
    assert list(Ranking(0, lambda i: i)) == []
