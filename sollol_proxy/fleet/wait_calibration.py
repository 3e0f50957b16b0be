"""How long holds for a busy slot really last, against how long they were expected to.

A request that holds in the proxy for a busy slot holding its prompt (`fleet/waiting.py`) is
priced with the slot's expected wait (`fleet/snapshot.py` `wait_on`: what remains of the request
in the slot, from the learned service time). On the routing benchmark's shared prompts that
estimate ran low: the wait a hold really took over the one expected when it was made had a
median of 1.16 and 1.47 in two profiled runs, so holds looked cheaper than they were and the
slowest requests were holds with slots idle elsewhere (README, issue #18's fourth pass).

The proxy knows both ends of every hold: when it was made and the wait expected then, and when
the request left the queue for the node it held for (the slot freed). `Calibration` keeps, per
model, an exponentially weighted mean of realised over expected wait, bounded, and the selector
prices every later hold's wait with it. A hold given up at its deadline counts what it waited
(the wait was at least that); one that went elsewhere before its deadline (a better node freed)
says nothing about the slot and is not counted. Pure: the caller owns the clock.
"""

from __future__ import annotations

# Weight of one hold in the mean: about the last ten holds count.
ALPHA = 0.1
# The ratio stays within these: a few holds cut short by a burst's end, or one slot stuck on a
# long generation, must not make every wait look free or forbid every hold.
LOW, HIGH = 0.5, 3.0
# Expected waits shorter than this are a slot freeing any moment: their ratio is noise.
MIN_EXPECTED_S = 0.02


class Calibration:
    def __init__(self) -> None:
        self._ratio: dict[str, float] = {}  # model -> realised over expected wait
        self.samples: dict[str, int] = {}

    def ratio(self, model: str) -> float:
        """What to multiply a hold's expected wait by (1.0 until a hold of `model` ended)."""
        return self._ratio.get(model, 1.0)

    def observe(self, model: str, expected_s: float, waited_s: float) -> None:
        """A hold for `model` expected to wait `expected_s` (uncalibrated) ended after
        `waited_s`."""
        if expected_s < MIN_EXPECTED_S:
            return
        sample = min(max(waited_s / expected_s, LOW), HIGH)
        old = self._ratio.get(model, 1.0)
        self._ratio[model] = old + ALPHA * (sample - old)
        self.samples[model] = self.samples.get(model, 0) + 1
