"""Requests that chose to wait for a busy slot holding their prompt, rather than take a free node.

Each such decision is a `Hold`: the node, and a deadline after which the request takes whatever
node is free (waiting longer would cost more than the prefill it saves). At that deadline the
choice is weighed once more, as if the request came then (`extended`; the next deadline is
final): what it waited is spent either way, and giving up there pays the wait and the prefill
both (on the routing benchmark those were a run's slowest requests, 1-1.2 s to the first
token). `Waits` counts them per node for the load bound of
`routing.performance.worth_waiting`. A request that goes away while it waits is counted until
its deadline, at most a prefill's time.

A copy of the prompt a request waits for may become idle elsewhere before its node frees: a
warm-up (forward/warmup.py) finished. `Waits.wake` then marks the holds of that model whose
prompt starts with the copied prefix, on other nodes, so that admission weighs them again at
its next pass (`Waiter.offered`) instead of at their node's release or their deadline.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Hold:
    node: str
    until: float  # time.monotonic() after which the request takes a free node
    extended: bool = False  # made again at its first deadline: the next one is final
    model: str = ""
    root: bytes = b""  # the first prefix key of the request's prompt (b"": none)
    # A copy of its prompt's first prefix became idle on another node: weigh it again now.
    woken: bool = False


class Waits:
    def __init__(self) -> None:
        self._holds: dict[str, set[Hold]] = {}
        self._by_model: dict[str, set[Hold]] = {}  # the same holds, by model (`wake`)

    def hold(
        self,
        node: str,
        until: float,
        *,
        replacing: Hold | None,
        extended: bool = False,
        model: str = "",
        root: bytes = b"",
    ) -> Hold:
        """A request waits for `node` until `until` (instead of its earlier `replacing`)."""
        self.release(replacing)
        hold = Hold(node, until, extended, model, root)
        self._holds.setdefault(node, set()).add(hold)
        self._by_model.setdefault(model, set()).add(hold)
        return hold

    def release(self, hold: Hold | None) -> None:
        """The request stopped waiting (it got a node)."""
        if hold is None:
            return
        for index, key in ((self._holds, hold.node), (self._by_model, hold.model)):
            holds = index.get(key)
            if holds is not None:
                holds.discard(hold)
                if not holds:
                    del index[key]

    def wake(self, model: str, node: str, root: bytes, now: float) -> int:
        """An idle slot of `model` on `node` now holds the prefix `root`: the holds on other
        nodes for prompts starting with it are to be weighed again (their number). O(the
        model's holds)."""
        holds = self._by_model.get(model)
        if not holds:
            return 0
        woken = 0
        for hold in list(holds):
            if hold.until <= now:
                self.release(hold)
            elif hold.root == root and hold.node != node and not hold.woken:
                hold.woken = True
                woken += 1
        return woken

    def count(self, node: str, now: float, *, but: Hold | None = None) -> int:
        """Requests waiting for `node` now, `but` one."""
        holds = self._holds.get(node)
        if not holds:
            return 0
        for expired in [h for h in holds if h.until <= now]:
            self.release(expired)
        holds = self._holds.get(node)
        return 0 if not holds else len(holds) - (but in holds)

    def total(self, now: float) -> int:
        """Requests waiting for any node now."""
        return sum(self.count(node, now) for node in list(self._holds))
