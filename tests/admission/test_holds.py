"""A request that had better wait for a busy slot holding its prompt stays queued (Plan.hold)."""

from __future__ import annotations

import asyncio
import time

from sollol_proxy.admission.admission import Admission
from sollol_proxy.config import NodeConfig, QueueConfig
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.fleet.plan import Plan, Target
from sollol_proxy.fleet.waiting import Hold
from sollol_proxy.routing import Reason
from tests.conftest import eventually


def bare_node(name: str) -> NodeState:
    node = NodeState(NodeConfig(url=f"http://{name}:1", name=name, num_parallel=1))
    node.healthy = True
    node.models["m"] = {}
    return node


def to(node: NodeState) -> Plan:
    return Plan([Target(node, "test", Reason.LEAST_LOADED)])


async def test_a_held_request_waits_for_its_node_while_others_use_the_free_one() -> None:
    queue = Admission(QueueConfig())
    a, b = bare_node("a"), bare_node("b")
    offered: list[list[str]] = []

    def wait_for_a(free: list[NodeState]) -> Plan:
        offered.append([n.name for n in free])
        if a in free:
            return to(a)
        return Plan(hold=Hold("a", time.monotonic() + 30))

    async def held() -> str:
        async with queue.admit(5, "m", ("m",), lambda: [a, b], wait_for_a) as slot:
            assert slot.node is not None
            return slot.node.name

    async with queue.admit(5, "m", ("m",), lambda: [a, b], lambda free: to(a)):
        task = asyncio.create_task(held())
        await eventually(lambda: offered == [["b"]])  # offered b, chose to wait for a
        assert queue.waiting == 1 and queue.slots.all_in_use() == {"a": {"m": 1}}
        # Meanwhile b serves whoever does not wait; the held request is not offered b again.
        async with queue.admit(5, "m", ("other",), lambda: [b], lambda free: to(b)) as other:
            assert other.node is b
        assert queue.waiting == 1 and offered == [["b"]]  # not asked again while a is busy
    assert await asyncio.wait_for(task, 5) == "a"  # a's slot came free: granted there
    assert offered[-1] == ["a", "b"] and queue.slots.all_in_use() == {}


async def test_at_its_deadline_a_held_request_takes_a_free_node() -> None:
    queue = Admission(QueueConfig())
    a, b = bare_node("a"), bare_node("b")
    until = time.monotonic() + 0.2

    def wait_until(free: list[NodeState]) -> Plan:
        if time.monotonic() < until:
            return Plan(hold=Hold("a", until))
        return to(free[0])

    async with queue.admit(5, "m", ("m",), lambda: [a, b], lambda free: to(a)):
        start = time.monotonic()
        async with queue.admit(5, "m", ("m",), lambda: [a, b], wait_until) as slot:
            # No slot was released: the hold's own timer asked it again at the deadline.
            assert slot.node is b and time.monotonic() - start >= 0.19
            assert slot.waited_s > 0.15
