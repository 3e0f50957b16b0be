"""Requests that chose to wait for a busy slot holding their prompt, rather than take a free node.

Each such decision is a `Hold`: the node, and a deadline after which the request takes whatever
node is free (waiting longer would cost more than the prefill it saves). At that deadline the
choice is weighed once more, as if the request came then (`extended`; the next deadline is
final): what it waited is spent either way, and giving up there pays the wait and the prefill
both (on the routing benchmark those were a run's slowest requests, 1-1.2 s to the first
token). `Waits` counts them per node for the load bound of
`routing.performance.worth_waiting`. A request that goes away while it waits is counted until
its deadline, at most a prefill's time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, eq=False)
class Hold:
    node: str
    until: float  # time.monotonic() after which the request takes a free node
    extended: bool = False  # made again at its first deadline: the next one is final


class Waits:
    def __init__(self) -> None:
        self._holds: dict[str, set[Hold]] = {}

    def hold(
        self, node: str, until: float, *, replacing: Hold | None, extended: bool = False
    ) -> Hold:
        """A request waits for `node` until `until` (instead of its earlier `replacing`)."""
        self.release(replacing)
        hold = Hold(node, until, extended)
        self._holds.setdefault(node, set()).add(hold)
        return hold

    def release(self, hold: Hold | None) -> None:
        """The request stopped waiting (it got a node)."""
        if hold is None:
            return
        holds = self._holds.get(hold.node)
        if holds is not None:
            holds.discard(hold)
            if not holds:
                del self._holds[hold.node]

    def count(self, node: str, now: float, *, but: Hold | None = None) -> int:
        """Requests waiting for `node` now, `but` one."""
        holds = self._holds.get(node)
        if not holds:
            return 0
        for expired in [h for h in holds if h.until <= now]:
            holds.discard(expired)
        return len(holds) - (but in holds)

    def total(self, now: float) -> int:
        """Requests waiting for any node now."""
        return sum(self.count(node, now) for node in list(self._holds))
