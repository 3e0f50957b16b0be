"""The fleets, workloads and runs of `bench capacity`, and the report that compares the modes.

A run keeps each request's timings and, for the auto mode, what the proxy believed each node's
slots were over time (to report when the beliefs were right for good)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sollol_proxy.bench import nginx
from sollol_proxy.bench.routing import _q


@dataclass(frozen=True)
class Fleet:
    name: str
    description: str
    slots: tuple[int, ...]  # each node's hidden OLLAMA_NUM_PARALLEL
    restart: tuple[int, int] | None = None  # (node, new num_parallel) half-way through


FLEETS = {
    "mixed": Fleet("mixed", "3 nodes whose hidden OLLAMA_NUM_PARALLEL is 1, 2 and 4", (1, 2, 4)),
    "all4": Fleet("all4", "3 nodes with 4 hidden slots each", (4, 4, 4)),
    "restart": Fleet(
        "restart",
        "3 nodes with 2, 2 and 1 hidden slots; the third restarts with 4 half-way",
        (2, 2, 1),
        restart=(2, 4),
    ),
}


@dataclass(frozen=True)
class Workload:
    tokens: int = 20  # per answer
    token_delay: float = 0.01  # seconds per token with one busy slot
    batch_slowdown: float = 0.1  # each more busy slot makes every token 10 % slower
    load: float = 0.9  # offered load over the fleet's capacity (before any restart)
    duration: float = 60.0  # seconds of arrivals
    warmup: float = 30.0  # "steady" figures count the requests that arrive after this

    def capacity(self, slots: tuple[int, ...]) -> float:
        """Requests per second the fleet completes with every slot busy."""
        return sum(
            s / (self.tokens * self.token_delay * (1 + self.batch_slowdown * (s - 1)))
            for s in slots
        )


@dataclass
class Sample:
    arrived: float
    ttft: float
    total: float
    ok: bool


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    waited_in_ollama: float = 0.0
    # Of it, the waits that ended after the warm-up: once learned, auto's waits are its probes.
    waited_after_warmup: float = 0.0
    beliefs: list[tuple[float, tuple[int, ...]]] = field(default_factory=list)
    # Seconds the restarted node was out of the proxy's rotation after the restart (down,
    # ejected, on trial); None where nothing was sampled (nginx).
    out_after_restart: float | None = None
    repeats: list[Run] = field(default_factory=list)  # a pooled run: the runs it pools

    @classmethod
    def pooled(cls, runs: list[Run]) -> Run:
        """Several runs of one mode (other seeds) as one: percentiles over all their requests,
        throughput and time waited in Ollama averaged."""
        if len(runs) == 1:
            return runs[0]
        return cls(
            [s for r in runs for s in r.samples],
            sum(r.waited_in_ollama for r in runs) / len(runs),
            sum(r.waited_after_warmup for r in runs) / len(runs),
            repeats=runs,
        )

    def throughput(self, since: float = 0.0) -> float:
        if self.repeats:
            return sum(r.throughput(since) for r in self.repeats) / len(self.repeats)
        done = [s.arrived + s.total for s in self.samples if s.ok and s.arrived >= since]
        return len(done) / (max(done) - since) if done else 0.0

    def converged(self, truth: tuple[int, ...], start: float, end: float) -> float | None:
        """Seconds from `start` until the beliefs were `truth` for good; the slowest run's."""
        times = [converged(r.beliefs, truth, start, end) for r in self.repeats or [self]]
        return None if None in times else max(t for t in times if t is not None)

    def of(self, since: float) -> list[Sample]:
        return [s for s in self.samples if s.arrived >= since]


def arrivals(rate: float, duration: float, seed: int) -> list[float]:
    rng, clock, times = random.Random(seed), 0.0, []
    while True:
        clock += rng.expovariate(rate)
        if clock >= duration:
            return times
        times.append(clock)


def converged(
    beliefs: list[tuple[float, tuple[int, ...]]], truth: tuple[int, ...], start: float, end: float
) -> float | None:
    """Seconds from `start` until the beliefs equal `truth` for good (until `end`)."""
    since: float | None = None
    for at, believed in beliefs:
        if at < start or at >= end:
            continue
        since = (at if since is None else since) if believed == truth else None
    return None if since is None else since - start


# "told again" is told run a second time: how far two runs of one proxy are apart (the noise).
MODES = ("auto", "told", "told again", "no queue", "least conn")
TOLD = ("told", "told again")


def _row(mode: str, run: Run, told: Run, since: float) -> str:
    samples, base = run.of(since), told.of(since)

    def cell(values: list[float], reference: list[float]) -> str:
        value, ref = _q(values, 95), _q(reference, 95)
        return f"{value:.3f} ({value / ref:.2f})" if ref else f"{value:.3f}"

    throughput, reference = run.throughput(since), told.throughput(since)
    return (
        f"| {mode} | {len(samples)} | {sum(not s.ok for s in samples)} | "
        f"{throughput:.1f} ({throughput / reference if reference else 0:.2f}) | "
        f"{_q([s.ttft for s in samples], 50):.3f} | "
        f"{cell([s.ttft for s in samples], [s.ttft for s in base])} | "
        f"{_q([s.total for s in samples], 50):.3f} | "
        f"{cell([s.total for s in samples], [s.total for s in base])} | "
        f"{run.waited_in_ollama if since == 0 else run.waited_after_warmup:.1f} |"
    )


def report(fleet: Fleet, workload: Workload, runs: dict[str, Run], seeds: str) -> list[str]:
    baseline = "nginx least_conn" if nginx.available() else "the proxy's least_loaded, no queue"
    rate = workload.capacity(fleet.slots) * workload.load
    lines = [
        f"\n**{fleet.name}**: {fleet.description}; {rate:.1f} req/s offered "
        f"({workload.load:g}x capacity) for {workload.duration:g} s, {workload.tokens} tokens "
        f"at {workload.token_delay * 1000:g} ms per answer; each mode pools "
        f"{len(runs['auto'].repeats) or 1} runs (seeds {seeds}); least conn = {baseline}\n",
    ]
    auto = runs["auto"]
    truth, end = fleet.slots, workload.duration
    if fleet.restart is not None:
        index, slots = fleet.restart
        end = workload.duration / 2
        after = tuple(slots if i == index else s for i, s in enumerate(fleet.slots))
    last = (auto.repeats or [auto])[-1].beliefs
    learned = last[-1][1] if last else ()
    took = auto.converged(truth, 0.0, end)
    lines.append(
        f"Slots learned (auto) at the end: {list(learned)}; truth {list(truth)}"
        + (f" -> {list(after)} after the restart" if fleet.restart else "")
        + f". Right for good after {_seconds(took)} (the slowest run)"
        + (
            f"; after the restart, relearned in {_seconds(auto.converged(after, end, 1e9))}."
            if fleet.restart
            else "."
        )
    )
    header = (
        "| run | requests | errors | completed/s (vs told) | TTFT p50 | TTFT p95 (vs told) "
        "| total p50 | total p95 (vs told) | waited in Ollama (s) |"
    )
    for title, since in (("whole run", 0.0), (f"after {workload.warmup:g} s", workload.warmup)):
        lines += ["", f"{title}:", "", header, "|---|---|---|---|---|---|---|---|---|"]
        lines += [_row(mode, runs[mode], runs["told"], since) for mode in MODES if mode in runs]
    if runs["told"].repeats:
        lines += [
            "",
            f"Total p95 after {workload.warmup:g} s over told's, run by run (seed by seed):",
        ]
        lines += [
            f"{mode} {_per_run(runs[mode], runs['told'], workload.warmup)}"
            for mode in MODES
            if mode in runs and mode != "told"
        ]
    if fleet.restart is not None:
        # A connection that lands while the node is down ejects it for seconds: in some runs
        # of a mode and not in others, whatever the mode. It moves the p95 after the restart
        # more than anything the modes do, so it is shown beside the ratios.
        lines += ["", "Seconds the restarted node was out of rotation, run by run:"]
        lines += [
            f"{mode} "
            + ", ".join(
                _seconds_or_na(r.out_after_restart) for r in runs[mode].repeats or [runs[mode]]
            )
            for mode in MODES
            if mode in runs
        ]
    return lines


def _seconds_or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _per_run(run: Run, told: Run, since: float) -> str:
    """Each run's ratio, to show how much of a pooled ratio one run makes."""
    ratios = []
    for mine, theirs in zip(run.repeats, told.repeats, strict=True):
        ref = _q([s.total for s in theirs.of(since)], 95)
        ratios.append(_q([s.total for s in mine.of(since)], 95) / ref if ref else 0.0)
    return ", ".join(f"{r:.2f}" for r in ratios)


def _seconds(value: float | None) -> str:
    return "never (within the run)" if value is None else f"{value:.1f} s"
