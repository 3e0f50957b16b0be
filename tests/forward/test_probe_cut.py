"""When a probe may be cut (forward/probe_cut.py); the cut itself runs over sockets in
tests/fleet/test_capacity.py and, with Redis, tests/shared/test_slots.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from sollol_proxy.config import Config, load_config
from sollol_proxy.forward.failed import Failed
from sollol_proxy.forward.probe_cut import Unserved, may_cut, route

if TYPE_CHECKING:
    from sollol_proxy.admission.tickets import Slot

SLOT = cast("Slot", object())  # may_cut asks only whether the request holds a slot


def config(**dotted: object) -> Config:
    overrides = {
        "nodes": ["http://127.0.0.1:1"],
        **{k.replace("__", "."): v for k, v in dotted.items()},
    }
    return load_config(None, env={}, overrides=overrides)


def test_a_first_probe_with_the_queue_and_local_state_may_be_cut() -> None:
    assert may_cut(config(), SLOT, requeued=False, failed=[])


def test_a_probe_is_cut_once_per_request_and_only_on_its_first_node() -> None:
    assert not may_cut(config(), SLOT, requeued=True, failed=[])
    assert not may_cut(config(), SLOT, requeued=False, failed=[Failed("a", "reset", 502)])


def test_no_cut_without_a_slot_a_queue_or_local_state() -> None:
    assert not may_cut(config(), None, requeued=False, failed=[])
    assert not may_cut(config(queue__enabled=False), SLOT, requeued=False, failed=[])
    shared = config(state__backend="redis", state__redis_url="redis://127.0.0.1:1/0")
    assert not may_cut(shared, SLOT, requeued=False, failed=[])


def test_the_route_names_the_node_and_the_wait() -> None:
    assert route(Unserved("gpu-1", 0.4567)) == (
        "next node with a free slot (a probe on gpu-1 had none within 0.46s)"
    )
