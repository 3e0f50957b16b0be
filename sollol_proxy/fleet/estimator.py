"""How many requests a node really runs at once for a model, learned from traffic instead of
configuration (what it can hold in memory: memory.py).

Why: Ollama gives each loaded model OLLAMA_NUM_PARALLEL slots (default 1, often set to 2-32) and
never says how many. Requests beyond them wait on the runner's semaphore without a 503 (reference
5.2). A proxy that assumes too few holds back work the node would have served; one that assumes
too many leaves requests queued inside Ollama, where they can no longer go to a free node.

The signal: that wait is inside the final object's `total_duration` and outside `load_duration`,
`prompt_eval_duration` and `eval_duration` (reference 5.6), so `slot_wait = total - load -
prompt_eval - eval`, plus a few ms of rendering and tokenising. With it the proxy knows K, how
many of its requests to that node and model were in flight when the request was dispatched
(itself included).

The rules. Netflix's concurrency-limits and Envoy's adaptive concurrency infer queueing from
latency gradients; here the queueing is measured, so the window can follow proofs:
- A request that ran at K without a slot wait proves slots >= K. Proofs raise the belief at once.
  Other clients of the node can only add waits, never remove them, so a proof is trusted.
- A request that waited at K suggests slots < K, but another client may have held the slots. The
  belief drops only after `strikes` such waits at or under it, with no wait-free run at their
  concurrency in between. Waits that contradict a proof younger than `proof_ttl` seconds (the node
  came back with fewer slots) must go on for `restart_rounds` rounds, i.e. that many times the
  belief in a row: one request of another client makes about one round of the proxy's requests
  wait. Then every proof is forgotten.
- Until the first wait the limit is belief + 1, and each proof raises the belief: one request
  beyond what is proven, a congestion window of one. Doubling per round (TCP's slow start) found
  the truth in fewer rounds but let in up to twice the slots before the first wait, and every
  request beyond the slots waits a whole generation inside Ollama, where no other node can take
  it (`bench capacity --tokens 100`: 15 to 19 s of such waits per run, 6 to 13 s with a window
  of one). After the first wait the limit is belief + 1 while probing, one probe at a time
  (until it ends, the limit is the belief: a burst of probes would all wait). A probe that
  waits stops probing for a number of full-window dispatches (there was demand) that doubles up
  to `max_backoff`, or for `probe_every` seconds if that comes first, so a saturated node sees
  its limit alternate between the truth and one more, rarely: every probe that waits costs one
  request a wait inside Ollama. Once the truth is bracketed (a wait-free run at the belief, a
  wait at one more; one slot needs no proof) the backoff is `max_backoff` at once, and the time
  between probes doubles with every probe that waits again, from `probe_every` up to
  `probe_every_max`: a runner's slots are fixed for its life, and a new runner shows itself (see
  beliefs.py), so the timed probe is only a safety net, and each one costs a request a slot's
  time inside Ollama. A failed or cut request makes the next probe due (a restart cuts streams).
  A wait-free run at a concurrency that used to wait means the node gained slots: the window
  grows again. After a whole node restarted (`reset(eager=True)`) the window is two until the
  first wait: the restart is when OLLAMA_NUM_PARALLEL changes, requests queued meanwhile, and
  two slots a round cost at most one more request waiting inside Ollama.
- While it grows, the belief is a lower bound: `lift` raises it to what another node proved
  (peers.Peers), a guess that `strikes` waits at it take back like any other belief.
- A configured or forced value (`fixed`: num_parallel from the config, 1 for embedding models and
  single-slot families) is used as is and never changed by observation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A slot wait shorter than this (or than NOISE_SHARE of the request) is rendering and parsing.
NOISE_S = 0.020
NOISE_SHARE = 0.05


def slot_wait(total_s: float, load_s: float, prompt_eval_s: float, eval_s: float) -> float:
    """The time a request spent waiting for a slot, from its final object's timings (seconds)."""
    return max(0.0, total_s - load_s - prompt_eval_s - eval_s)


def waited(slot_wait_s: float, total_s: float) -> bool:
    """Is that a wait for a slot, or rendering and parsing?"""
    return slot_wait_s > max(NOISE_S, NOISE_SHARE * total_s)


@dataclass(frozen=True, slots=True)
class Change:
    """A change of belief, for the caller's log line."""

    before: int
    after: int
    source: str
    reason: str

    def __str__(self) -> str:
        return f"slots {self.before} -> {self.after} ({self.source}): {self.reason}"


class CapacityEstimator:
    """The parallel slots of one node for one model. Not thread-safe; call from one loop."""

    def __init__(
        self,
        prior: int = 1,
        *,
        fixed: int | None = None,
        cap: int = 32,
        strikes: int = 2,
        restart_rounds: int = 3,
        proof_ttl: float = 600.0,
        max_backoff: int = 512,
        probe_every: float = 30.0,
        probe_every_max: float = 480.0,
    ) -> None:
        self.cap = max(1, cap)
        self.fixed = None if fixed is None else max(1, fixed)
        self.strikes = strikes
        self.restart_rounds = restart_rounds
        self.proof_ttl = proof_ttl
        self.max_backoff = max_backoff
        self.probe_every = probe_every
        self.probe_every_max = max(probe_every, probe_every_max)
        self._restart(prior)

    def _restart(self, prior: int) -> None:
        self._believed = min(max(1, prior), self.cap)
        self._proven = 0  # highest K that ran without a slot wait
        self._proven_at = -math.inf
        self._ceiling: int | None = None  # lowest K seen waiting above the belief
        self._strike_ks: list[int] = []  # K of recent waits at or under the belief
        self._slow_start = True
        self._until_probe = 0  # full-window dispatches before the next probe
        self._probes = 0  # probes sent and not ended: one at a time, so a probe means one wait
        self._probed_at = -math.inf
        self._backoff = 1
        self._probe_interval = self.probe_every  # seconds after which a backed-off probe is due
        self._bracketed = False  # the last probe that waited was one above a proven belief
        self._observed = False
        self._eager = False  # the node restarted: two beyond the belief until the first wait

    @property
    def believed(self) -> int:
        return self.fixed or self._believed

    @property
    def upper(self) -> int | None:
        """The most slots the waits seen allow (one less than the lowest concurrency seen
        waiting above the belief, and not run without a wait since); None while nothing waited
        there: the belief is then only a lower bound."""
        if self.fixed:
            return self.fixed
        return None if self._ceiling is None else max(self._believed, self._ceiling - 1)

    @property
    def limit(self) -> int:
        """How many requests the proxy should have in flight to this node and model."""
        if self.fixed:
            return self.fixed
        if self._slow_start:
            return min(self.cap, self._believed + 1 + self._eager)
        return min(self.cap, self._believed + (self._until_probe <= 0 and not self._probes))

    @property
    def source(self) -> str:
        if self.fixed:
            return "configured"
        if not self._observed:
            return "default"
        return "probing" if self._slow_start else "learned"

    @property
    def growing(self) -> bool:
        """Learned, and no wait seen yet (slow start): the belief is only a lower bound."""
        return not self.fixed and self._observed and self._slow_start

    def lift(self, value: int, reason: str) -> Change | None:
        """Believe at least `value` (what a peer proved) while still growing: a guess, not a
        proof, which waits at it take back as usual (`strikes` of them)."""
        value = min(value, self.cap)
        if not self.growing or value <= self._believed:
            return None
        before, self._believed = self._believed, value
        return Change(before, value, self.source, reason)

    def dispatched(self, in_flight_after: int, now: float) -> bool:
        """The proxy sent a request; `in_flight_after` counts it. True when it is a probe (more
        than believed, after slow start): the caller reports its end with `probe_ended()`, and
        until then no other probe is let in."""
        if self.fixed:
            return False
        self._age(now)
        if in_flight_after > self._believed and not self._slow_start:
            self._probes += 1
            self._probed_at = now
            return True
        if self._until_probe > 0 and now - self._probed_at >= self._probe_interval:
            self._until_probe = 0  # however long the backoff, a node that gained slots is seen
        if in_flight_after >= self._believed and self._until_probe > 0:
            self._until_probe -= 1
        return False

    def probe_ended(self) -> None:
        """A probe is over (answered, failed or cut): the next one may go when due."""
        self._probes = max(0, self._probes - 1)

    def finished(
        self,
        in_flight_at_dispatch: int,
        slot_wait_s: float | None,
        now: float,
        total_s: float = 0.0,
        overlap: int | None = None,
    ) -> Change | None:
        """A request ended. `slot_wait_s` is None when the answer had no timings (a failure or a
        cut stream); `total_s` is its total_duration, to scale the noise threshold. `overlap`:
        how many of the requests in flight at its dispatch (itself included) were still in
        flight when its first byte came; a run without a wait proves only that many slots."""
        if self.fixed:
            return None
        if slot_wait_s is None:
            self._until_probe = 0  # a failure: if the node restarted, a probe soon tells
            return None
        self._age(now)
        before, source = self._believed, self.source
        k = max(1, in_flight_at_dispatch)
        self._observed = True
        if not waited(slot_wait_s, total_s):
            reason = self._ran_free(max(1, min(k, overlap or k)), now)
        else:
            reason = self._waited(k, now)
        if (self._believed, self.source) == (before, source):
            return None
        return Change(before, self._believed, self.source, reason)

    def reset(self, reason: str, prior: int | None = None, *, eager: bool = False) -> Change | None:
        """Forget everything learned (the node restarted) and start again from `prior`, by default
        the current belief, now unproven: a lower bound still growing (`probing`) if it was
        learned, so that what peers proved lifts it at once rather than after an answer.
        `eager`: the whole node restarted, maybe to change OLLAMA_NUM_PARALLEL, and requests
        queued meanwhile: until the first wait the window is two beyond the belief, learning
        two slots per round for at most one more request waiting inside Ollama."""
        if self.fixed:
            return None
        before, source, observed = self._believed, self.source, self._observed
        self._restart(self._believed if prior is None else prior)
        self._observed = observed and prior is None
        self._eager = eager and self._observed
        if (self._believed, self.source) == (before, source):
            return None
        return Change(before, self._believed, self.source, reason)

    def adopt(self, believed: int, reason: str) -> Change | None:
        """Take a belief learned elsewhere (another replica of the proxy, sharing its beliefs
        in Redis) as this one's: it counts as learned; probing goes on from it as usual. What
        was proven above it is forgotten (the other replica saw waits there, or a restart)."""
        if self.fixed:
            return None
        before, source = self._believed, self.source
        self._believed = min(max(1, believed), self.cap)
        self._observed, self._slow_start = True, False
        self._strike_ks.clear()
        if self._proven > self._believed:
            self._proven, self._proven_at = self._believed, -math.inf
        if self._ceiling is not None and self._ceiling <= self._believed:
            self._ceiling = None
        if (self._believed, self.source) == (before, source):
            return None
        return Change(before, self._believed, self.source, reason)

    def _age(self, now: float) -> None:
        if self._proven and now - self._proven_at > self.proof_ttl:
            self._proven = 0  # not seen for a while: the node may have restarted since

    def _ran_free(self, k: int, now: float) -> str:
        k = min(k, self.cap)
        if k >= self._proven:
            self._proven, self._proven_at = k, now
        # The node served k at once, so waits at k or fewer were another client's doing.
        self._strike_ks = [s for s in self._strike_ks if s > k]
        if self._ceiling is not None and k >= self._ceiling:
            self._ceiling, self._slow_start = None, True
        if k > self._believed:
            self._believed, self._until_probe, self._backoff = k, 0, 1
            self._probe_interval, self._bracketed = self.probe_every, False
        if self._believed >= self.cap:
            self._slow_start = False
        return f"{k} in flight ran without a slot wait"

    def _waited(self, k: int, now: float) -> str:
        self._slow_start = self._eager = False
        if k > self._believed:
            self._ceiling = k if self._ceiling is None else min(self._ceiling, k)
            if self._until_probe <= 0:  # the probe failed: back off
                # A runner has one slot at least: a belief of one needs no proof.
                if max(1, self._proven) >= self._believed and self._ceiling == self._believed + 1:
                    # Bracketed: the truth is the belief. Only a new runner changes it, and that
                    # shows (cut streams, failed probes, /api/ps, a load): probe rarely, and
                    # more rarely each time the bracket holds.
                    if self._bracketed:
                        self._probe_interval = min(2 * self._probe_interval, self.probe_every_max)
                    self._backoff, self._bracketed = self.max_backoff, True
                self._until_probe, self._probed_at = self._backoff, now
                self._backoff = min(2 * self._backoff, self.max_backoff)
            return f"a probe at {k} in flight waited for a slot"
        self._strike_ks.append(k)
        low = min(self._strike_ks)
        contradicts = low <= self._proven
        needed = self.restart_rounds * self._believed if contradicts else self.strikes
        if len(self._strike_ks) < needed:
            return f"a wait for a slot at {k} in flight"
        self._believed = max(1, low - 1)
        self._ceiling = low
        self._strike_ks.clear()
        self._until_probe = self._backoff
        self._probe_interval, self._bracketed = self.probe_every, False
        if contradicts:
            self._proven, self._proven_at = 0, -math.inf
            return f"repeated slot waits at {low} in flight, which used to run at once"
        return f"repeated slot waits at {low} in flight"
