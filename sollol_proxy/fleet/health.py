"""One node's health: may it take new work now, and why not.

States (the names are a small, fixed set that metrics and dashboards may use as labels):

- ``up``: takes work.
- ``down``: unreachable, from a failed probe or a connection the node refused. Until the first
  good probe every node is down; that probe makes it ``up``. A node that drops out later is
  ejected (below) as well, so a good probe brings it back through ``half_open``: at once after
  its first drop-out in a row (a restart), else once the ejection is over.
- ``ejected``: reachable but failing (consecutive resets, 5xx, timeouts; or a failed trial).
  Out of rotation for an ejection time that doubles with every ejection in a row.
- ``busy``: Ollama answered its queue-full 503. Overload, not death: a short cool-down, then
  ``up`` again without a trial.
- ``half_open``: the ejection time is over; one request at a time may try the node. Its
  success brings the node ``up``, its failure ejects it again for longer.

The probe loop (fleet.py) and the forwarder's attempt outcomes (forward/forwarder.py) drive it. Time moves
through an injected clock, so the whole machine is testable without sleeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from sollol_proxy.config.policies import OutlierPolicy

log = logging.getLogger("sollol.health")


class State(StrEnum):
    UP = "up"
    DOWN = "down"
    EJECTED = "ejected"
    BUSY = "busy"
    HALF_OPEN = "half_open"


# Read once: an enum member read through its class is a descriptor call, and admits() runs for
# every node of every request's candidates.
_UP, _DOWN, _EJECTED, _BUSY = State.UP, State.DOWN, State.EJECTED, State.BUSY
_HALF_OPEN = State.HALF_OPEN


class Failure(StrEnum):
    """What went wrong on one attempt; decides how the node's state changes."""

    CONNECT = "connect"  # no connection at all: the node is unreachable
    RESET = "reset"  # the connection broke
    TIMEOUT = "timeout"  # no first byte in time, or silence mid-stream
    SERVER_ERROR = "server_error"  # a 5xx answer (not the busy 503)


@dataclass
class Counters:
    """Monotonic per-node counts, for metrics and the dashboard."""

    ejections: int = 0
    busy: int = 0  # queue-full 503 answers
    failures: int = 0  # attempts that failed, before or after the first byte
    mid_stream_failures: int = 0
    retries: int = 0  # attempts this node took over after another node failed
    failovers: int = 0  # requests that left this node for another one after a failure


@dataclass
class NodeHealth:
    name: str
    policy: OutlierPolicy = field(default_factory=OutlierPolicy)
    clock: Callable[[], float] = time.monotonic
    state: State = State.DOWN
    reason: str = "not probed yet"
    consecutive: int = 0  # failures in a row since the last success
    streak: int = 0  # ejections in a row; sets the next ejection's length
    until: float = 0.0  # end of the current ejection or busy cool-down
    trial: bool = False  # a half-open trial request is under way
    up_since: float = 0.0
    counters: Counters = field(default_factory=Counters)
    # told of every change of state (name, previous, new): the dashboard's marks
    listener: Callable[[str, State, State], None] | None = None

    # -- reading ------------------------------------------------------------------------------

    def current(self) -> State:
        """The state now: ejections and cool-downs end by themselves."""
        state = self.state
        if (state is _EJECTED or state is _BUSY) and self.clock() >= self.until:
            if state is _EJECTED:
                self._enter(State.HALF_OPEN, "ejection over: one trial request allowed")
            else:
                self._enter(State.UP, "busy cool-down over")
        return self.state

    def admits(self) -> bool:
        """May the node take a new request now (the half-open node: only if no trial runs)."""
        if self.state is _UP:  # the common case; only an ejection or a cool-down ends by itself
            return True
        state = self.current()
        return state is _UP or (state is _HALF_OPEN and not self.trial)

    def cut_short(self) -> bool:
        """No other node can take the work: an ejection ends now (one trial, as when it runs
        out) and a busy cool-down too. Envoy's panic mode, one trial at a time. True if the
        node now admits."""
        state = self.current()
        if state is State.EJECTED:
            self._enter(State.HALF_OPEN, "no other node can take the work: trial now")
        elif state is State.BUSY:
            self._enter(State.UP, "no other node can take the work")
        return self.admits()

    @property
    def reachable(self) -> bool:
        """Answers at all (for the fleet views): anything but down."""
        return self.state is not _DOWN

    # -- attempts -----------------------------------------------------------------------------

    def begin(self) -> bool:
        """An attempt is about to be sent here; False when the node may not take it now.
        A half-open node hands out its single trial here."""
        if not self.admits():
            return False
        if self.state is State.HALF_OPEN:
            self.trial = True
        return True

    def answered(self) -> None:
        """The node started an answer that is not a failure: a trial has passed. The failure
        count waits for the answer's end (`succeeded`): a stream may still break."""
        if self.state is State.HALF_OPEN:
            self.trial = False
            # On probation until an answer goes through whole: one more failure ejects it.
            self.consecutive = self.policy.consecutive_failures - 1
            self._enter(State.UP, "trial request answered")

    def succeeded(self) -> None:
        """A whole answer went through."""
        self.answered()
        self.consecutive = 0

    def abandoned(self) -> None:
        """The attempt ended without a verdict (the client left): the trial is free again."""
        self.trial = False

    def failed(self, kind: Failure, reason: str) -> None:
        self.consecutive += 1
        self.counters.failures += 1
        was_trial, self.trial = self.trial, False
        state = self.current()
        if state is State.DOWN:  # e.g. a request pinned to a node that is already out
            self.reason = reason
            return
        if state is State.EJECTED:
            if kind is Failure.CONNECT:
                self._enter(State.DOWN, reason)
            return
        if kind is Failure.CONNECT:
            self._eject(State.DOWN, reason)
        elif was_trial or state is State.HALF_OPEN:
            self._eject(State.EJECTED, f"trial request failed: {reason}")
        elif self.consecutive >= self.policy.consecutive_failures:
            self._eject(State.EJECTED, f"{self.consecutive} failures in a row, last: {reason}")
        else:
            self.reason = reason

    def busy(self, reason: str, *, others_available: bool) -> None:
        """A queue-full 503. The cool-down is skipped when no other node could take the work:
        overload alone never takes the last node out."""
        self.counters.busy += 1
        self.consecutive = 0  # it answered: it is alive
        if self.trial:
            self.trial = False
            self._enter(State.UP, "trial request answered (busy)")
        if not others_available or self.current() is not State.UP:
            return
        self.until = self.clock() + self.policy.busy_cooldown
        self._enter(State.BUSY, f"{reason}; no new work for {self.policy.busy_cooldown:g}s")

    def ejected_elsewhere(self, remaining: float, reason: str) -> None:
        """Another replica of the proxy ejected the node (state shared in Redis): out here
        too for what is left of that ejection, then one trial as after an ejection of ours."""
        state = self.current()
        if remaining <= 0 or state in (State.EJECTED, State.DOWN):
            return
        self.trial = False
        self.until = self.clock() + remaining
        self._enter(State.EJECTED, reason)

    # -- probes -------------------------------------------------------------------------------

    def probe_ok(self) -> None:
        if self.state is not State.DOWN:
            return
        if self.streak == 0:
            self.consecutive = 0
            self._enter(State.UP, "probe answered")
        elif self.clock() < self.until and self.streak > 1:
            self._enter(State.EJECTED, "probe answered; ejection not over yet")
        elif self.clock() < self.until:
            # Out once, unreachable, and answering again: most often a restart (Ollama's takes
            # a second). A trial now, not at the ejection's end; if it fails, the next ejection
            # (twice as long) is served whole, so a flapping node still stays out.
            self._enter(State.HALF_OPEN, "probe answered after one drop-out: one trial request")
        else:
            self._enter(State.HALF_OPEN, "probe answered: one trial request allowed")

    def probe_failed(self, reason: str) -> None:
        if self.state is State.DOWN:
            self.reason = reason
            return
        self.trial = False
        if self.state is State.EJECTED:
            self._enter(State.DOWN, reason)
        else:  # a node that drops out while in use is ejected, so a flapping one stays out longer
            self._eject(State.DOWN, reason)

    # -- transitions --------------------------------------------------------------------------

    def _eject(self, state: State, reason: str) -> None:
        now = self.clock()
        if self.state in (State.UP, State.BUSY) and now - self.up_since >= self.policy.max_ejection:
            self.streak = 0  # up long enough: past ejections are forgiven
        length = min(self.policy.base_ejection * 2**self.streak, self.policy.max_ejection)
        self.streak += 1
        self.consecutive = 0  # counted afresh once it is back
        self.until = now + length
        self.counters.ejections += 1
        self._enter(state, f"{reason} (out for {length:g}s, ejection {self.streak} in a row)")

    def _enter(self, state: State, reason: str) -> None:
        previous = self.state
        self.state, self.reason = state, reason
        if state is State.UP:
            self.up_since = self.clock()
            self.reason = ""
        if state is not previous:
            level = logging.INFO if state in (State.UP, State.HALF_OPEN) else logging.WARNING
            log.log(level, "node %s: %s -> %s: %s", self.name, previous, state, reason)
            if self.listener is not None:
                self.listener(self.name, previous, state)

    def snapshot(self) -> dict[str, object]:
        state = self.current()
        remaining = (
            max(0.0, self.until - self.clock()) if state in (State.EJECTED, State.BUSY) else 0
        )
        return {
            "state": state.value,
            "reason": self.reason or None,
            "for_s": round(remaining, 3),
            "consecutive_failures": self.consecutive,
            "ejections_in_a_row": self.streak,
            "ejections": self.counters.ejections,
            "busy": self.counters.busy,
            "failures": self.counters.failures,
            "mid_stream_failures": self.counters.mid_stream_failures,
            "retries": self.counters.retries,
            "failovers": self.counters.failovers,
        }
