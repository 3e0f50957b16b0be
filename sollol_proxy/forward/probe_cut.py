"""A streamed probe that finds no free slot goes back to the proxy's queue (issue #11).

A probe is a request sent beyond a node's proven slots to learn whether it has more. When it
has not, Ollama holds the request on its slot semaphore for a whole generation; the proxy's
queue would have sent it to the next slot to free, anywhere. So a probe whose first byte is
later than its patience (priced in attempt.py) is cut before the client has received anything,
counted as a wait (the node has no more slots than believed), and waits in the queue again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sollol_proxy.config import Config

if TYPE_CHECKING:
    from sollol_proxy.admission.tickets import Slot
    from sollol_proxy.forward.attempt import Attempt, DispatchObserver

log = logging.getLogger("sollol.proxy")
NO_SLOT_CAME = "its probe found no free slot, and none came within its maximum wait"


@dataclass(frozen=True, slots=True)
class Unserved:
    """A probe given up before its first byte: it was waiting for a slot (not a failure). The
    request waits in the proxy's queue for the next free slot, the same node's included."""

    node: str
    waited_s: float


def may_cut(config: Config, slot: Slot | None, requeued: bool, failed: Sequence[object]) -> bool:
    """May a probe of this request be cut? Once, on its first node (a retry's budget and
    backoff are spent already), only with this process's own slots (a slot granted on the way
    back carries no Redis lease, which the other replicas count), and only when a queue holds
    what the slots do not take (without one every node is free to the admission, so the probe
    would just be sent again)."""
    return (
        slot is not None
        and not requeued
        and not failed
        and config.queue.enabled
        and config.state.backend == "local"
    )


def patience(
    observer: DispatchObserver | None,
    attempt: Attempt | None,
    slot: Slot,
    first_byte: float | None,
) -> float | None:
    """How long this attempt may wait for its first byte before it is cut; None when it is no
    probe, or when the request's own first-byte timeout comes sooner anyway."""
    if observer is None or attempt is None or not attempt.probe:
        return None
    waited = observer.probe_patience(attempt, slot.wait_left())
    if waited is None or (first_byte is not None and waited >= first_byte):
        return None
    return waited


def cut(observer: DispatchObserver, attempt: Attempt, waited_s: float, request_id: str) -> Unserved:
    """Give the probe up: the node learns it waited, and the request is unserved so far."""
    observer.probe_waited(attempt, waited_s)
    node = attempt.node.name
    log.info(
        "%s: probe on %s had no first byte within %.2fs: waiting for a slot there; back to "
        "the queue",
        request_id,
        node,
        waited_s,
    )
    return Unserved(node, waited_s)


def route(unserved: Unserved) -> str:
    """The route header of the node the cut request went to next."""
    return (
        f"next node with a free slot (a probe on {unserved.node} had none within "
        f"{unserved.waited_s:.2f}s)"
    )
