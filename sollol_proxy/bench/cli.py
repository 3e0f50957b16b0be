"""`sollol-proxy bench ...`: each benchmark's command, its options and where its code lives
(imported when the command runs, so `sollol-proxy` starts without loading them)."""

from __future__ import annotations

from typing import IO

import click


@click.group()
def bench() -> None:
    """Benchmarks (each compares against a baseline in the same run)."""


@bench.command("overhead")
@click.option("--rounds", default=3, show_default=True, help="Alternating direct/proxy rounds.")
@click.option("--scale", default=1.0, show_default=True, help="Multiply the request counts.")
@click.option(
    "--engine",
    "engines",
    multiple=True,
    type=click.Choice(["fast", "aiohttp"]),
    help="listen.engine of the proxy measured; given twice, both side by side (default: fast).",
)
def bench_overhead(rounds: int, scale: float, engines: tuple[str, ...]) -> None:
    """Latency and CPU the proxy adds, against the same node reached directly."""
    from sollol_proxy.bench.overhead import run

    run(rounds=rounds, scale=scale, engines=engines or ("fast",))


@bench.command("scale")
@click.option("--streams", default=10_000, show_default=True, help="Idle streams held at once.")
@click.option(
    "--nodes", "fleets", multiple=True, type=int, help="Configured nodes (default: 100, 1000)."
)
@click.option("--interval", default=5.0, show_default=True, help="health.interval, seconds.")
def bench_scale(streams: int, fleets: tuple[int, ...], interval: float) -> None:
    """The proxy with many configured nodes and many idle streams."""
    from sollol_proxy.bench.scale import run

    run(streams=streams, fleets=fleets or (100, 1000), interval=interval)


@bench.command("routing")
@click.option("--seed", default=7, show_default=True, help="Seed of the generated workloads.")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(
        ["chat_sessions", "many_models", "mixed_speed", "shared_prompts", "crowded", "pairs"]
    ),
    help="Run only these workloads (default: all).",
)
@click.option(
    "--strategy",
    "strategies",
    multiple=True,
    type=click.Choice(
        [
            "round_robin",
            "random",
            "least_loaded",
            "nginx_least_conn",
            "pin_groups",
            "performance",
            "performance_told",
        ]
    ),
    help="Run only these strategies (default: all; ratios are to round_robin, else the first).",
)
@click.option(
    "--requests",
    type=click.File("wb"),
    default=None,
    help="Also write one JSON line per request to this file (where each went, and why).",
)
def bench_routing(
    seed: int, scenarios: tuple[str, ...], strategies: tuple[str, ...], requests: IO[bytes] | None
) -> None:
    """Every strategy on the same seeded workloads; ratios to round_robin."""
    from sollol_proxy.bench.routing import run

    run(
        seed=seed,
        scenarios=list(scenarios) or None,
        strategies=strategies or None,
        requests=requests,
    )


@bench.command("routing-tail")
@click.argument("files", nargs=-1, required=True, type=click.File("rb"))
@click.option(
    "--strategy", default="performance", show_default=True, help="Whose slowest 5% to read."
)
def bench_routing_tail(files: tuple[IO[bytes], ...], strategy: str) -> None:
    """Issue #18's targets per run, and what the slowest 5% are, from `bench routing
    --requests` files."""
    from sollol_proxy.bench.routing_tail import report

    print(report((line for f in files for line in f), strategy))


@bench.command("scorer")
@click.option("--decisions", default=20000, show_default=True)
def bench_scorer(decisions: int) -> None:
    """Time per routing decision for 10 and 100 nodes, for every strategy."""
    from sollol_proxy.bench.scorer import run

    run(decisions)


@bench.command("bodies")
@click.option("--size", default=60, show_default=True, help="MiB per body (the limit is 64).")
@click.option(
    "--pythonpath",
    type=click.Path(file_okay=False),
    help="Run the proxy from this source tree instead (to compare with another commit).",
)
def bench_bodies(size: int, pythonpath: str | None) -> None:
    """Large hostile bodies: the proxy's loop stall, its memory, its nodes' health."""
    from sollol_proxy.bench.bodies import run

    run(size_mib=size, pythonpath=pythonpath)


@bench.command("queue")
@click.option("--seed", default=7, show_default=True, help="Seed of the arrivals.")
@click.option("--duration", default=15.0, show_default=True, help="Seconds of arrivals.")
@click.option("--load", default=2.0, show_default=True, help="Offered load / fleet capacity.")
def bench_queue(seed: int, duration: float, load: float) -> None:
    """Priority classes under overload, with the queue and with plain pass-through."""
    from sollol_proxy.bench.queue import run

    run(seed=seed, duration=duration, load=load)


@bench.command("replicas")
@click.option("--seed", default=7, show_default=True, help="Seed of the arrivals.")
@click.option("--duration", default=10.0, show_default=True, help="Seconds of arrivals per run.")
@click.option("--replicas", default=3, show_default=True, help="Up to this many replicas.")
def bench_replicas(seed: int, duration: float, replicas: int) -> None:
    """1, 2, 3 replicas sharing state in Redis against one: latency, priorities, Redis cost."""
    from sollol_proxy.bench.replicas import run

    run(seed=seed, duration=duration, replicas=replicas)


@bench.command("embed")
@click.option("--scale", default=1.0, show_default=True, help="Multiply the document counts.")
@click.option("--rounds", default=3, show_default=True, help="Rounds of (a)-(c); medians.")
def bench_embed(scale: float, rounds: int) -> None:
    """Embedding throughput: split, baselines, coalescing, a batch job and its kill -9."""
    from sollol_proxy.bench.embed import run

    run(scale=scale, rounds=rounds)


@bench.command("capacity")
@click.option("--seed", default=7, show_default=True, help="Seed of the arrivals.")
@click.option(
    "--fleet",
    "fleets",
    multiple=True,
    type=click.Choice(["mixed", "all4", "restart"]),
    help="Run only these fleets (default: all).",
)
@click.option("--duration", default=60.0, show_default=True, help="Seconds of arrivals per run.")
@click.option("--warmup", default=30.0, show_default=True, help="Steady figures start here.")
@click.option("--load", default=0.9, show_default=True, help="Offered load / fleet capacity.")
@click.option("--repeat", default=1, show_default=True, help="Runs per mode (seeds), pooled.")
@click.option(
    "--tokens",
    default=20,
    show_default=True,
    help="Tokens per answer at 10 ms each: a slot is held about tokens x 10 ms (100: ~1 s).",
)
def bench_capacity(
    seed: int,
    fleets: tuple[str, ...],
    duration: float,
    warmup: float,
    load: float,
    repeat: int,
    tokens: int,
) -> None:
    """Slots learned from URLs only, against the proxy told them, no queue and least-conn."""
    from sollol_proxy.bench.capacity import run

    run(
        seed=seed,
        fleets=list(fleets) or None,
        duration=duration,
        warmup=warmup,
        load=load,
        repeat=repeat,
        tokens=tokens,
    )
