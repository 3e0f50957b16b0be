"""How often the watcher probes a node: backoff while it is down, jitter always."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sollol_proxy.config import load_config
from sollol_proxy.fleet.fleet import PROBE_TICK_S, Fleet, inventory_due
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.prompt_cache import PromptCache


def fleet(**settings: Any) -> Fleet:
    config = load_config(None, env={"SOLLOL_NODES": "a"}, overrides=settings)
    return Fleet(config, None, PromptCache())  # type: ignore[arg-type]  # no probe is sent


def test_probe_interval_doubles_while_down_up_to_the_cap() -> None:
    made = fleet(**{"health.interval": 2, "health.backoff_max": 10, "health.jitter": 0})
    node = made.nodes["a:11434"]
    delays = []
    for failed in range(5):
        node.failed_probes = failed
        delays.append(made.probe_delay(node))
    assert delays == [2, 4, 8, 10, 10]
    node.failed_probes = 10_000  # no overflow after days down
    assert made.probe_delay(node) == 10


def test_probe_interval_is_jittered_within_bounds() -> None:
    made = fleet(**{"health.interval": 5, "health.jitter": 0.2})
    node = made.nodes["a:11434"]
    delays = [made.probe_delay(node) for _ in range(300)]
    assert all(4.0 <= d <= 6.0 for d in delays)
    assert max(delays) - min(delays) > 1.0  # spread, not constant


def test_backoff_never_shortens_the_interval() -> None:
    made = fleet(**{"health.interval": 60, "health.backoff_max": 30, "health.jitter": 0})
    node = made.nodes["a:11434"]
    node.failed_probes = 3
    assert made.probe_delay(node) == 60


def test_an_out_of_date_inventory_is_due_even_with_the_clock_near_zero() -> None:
    # time.monotonic() starts near zero at boot: an inventory marked out of date must be re-read
    # at the next probe whatever the clock says, not once the clock passes some sentinel time.
    for now in (0.0, 0.3, 59.0):
        assert inventory_due(None, now, interval=3600)
    assert not inventory_due(0.2, 0.3, interval=3600)  # read a moment ago: not yet
    assert inventory_due(0.2, 3600.2, interval=3600)


async def test_first_probes_spread_over_the_interval_on_a_grid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = ",".join(f"n{i}" for i in range(60))
    config = load_config(None, env={"SOLLOL_NODES": nodes}, overrides={"health.interval": 2})
    made = Fleet(config, None, PromptCache())  # type: ignore[arg-type]  # no probe is sent
    loop = asyncio.get_running_loop()
    first: dict[str, float] = {}

    async def refresh(node: NodeState, *, inventory: bool = True) -> None:
        first.setdefault(node.name, loop.time())

    monkeypatch.setattr(made, "refresh", refresh)
    watchers = [asyncio.create_task(made.watch(node)) for node in made.nodes.values()]
    await asyncio.sleep(2.2)  # the interval, and one step of the grid
    for watcher in watchers:
        watcher.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    assert len(first) == 60  # every node's first probe came within the interval
    steps = [round(at / PROBE_TICK_S) for at in first.values()]
    # Spread: 20 steps in the interval, about 3 first probes in each; all at once puts every
    # one in the same step.
    assert max(steps.count(step) for step in set(steps)) <= 15
    # On the grid: the probes due within one step go out together, at the step.
    off = sorted(
        abs(at / PROBE_TICK_S - step) * PROBE_TICK_S
        for at, step in zip(first.values(), steps, strict=True)
    )
    assert off[len(off) // 2] < 0.01
