"""The `sollol-proxy` command."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click
import yaml

from sollol_proxy import __version__
from sollol_proxy.config import Config, ConfigError, parse_node_list
from sollol_proxy.lifecycle.reload import ConfigSource
from sollol_proxy.lifecycle.startup import StartupError
from sollol_proxy.observe.logformat import setup_logging

_F = Callable[..., Any]


def _config_options(func: _F) -> _F:
    options = [
        click.option(
            "-c",
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            envvar="SOLLOL_CONFIG",
            help="YAML config file (env SOLLOL_CONFIG).",
        ),
        click.option("--host", help="Listen address (default 0.0.0.0)."),
        click.option("--port", type=int, help="Listen port (default 11434)."),
        click.option(
            "--node",
            "nodes",
            multiple=True,
            help="Ollama node URL or host:port; repeat or comma-separate. Replaces the file's nodes.",
        ),
        click.option(
            "--hosts-file",
            type=click.Path(dir_okay=False),
            help="Plain list of nodes, one host:port per line, # comments.",
        ),
        click.option("--strategy", help="Routing strategy."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"])),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _source(params: dict[str, Any]) -> ConfigSource:
    flags = {
        "listen.host": ("host", "--host"),
        "listen.port": ("port", "--port"),
        "hosts_file": ("hosts_file", "--hosts-file"),
        "routing.strategy": ("strategy", "--strategy"),
        "log_level": ("log_level", "--log-level"),
    }
    overrides: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key, (param, flag) in flags.items():
        if params.get(param) is not None:
            overrides[key], origins[key] = params[param], f"option {flag}"
    if params.get("nodes"):
        overrides["nodes"], origins["nodes"] = parse_node_list(params["nodes"]), "option --node"
    return ConfigSource(params.get("config_path"), overrides, origins)


def _load_or_exit(params: dict[str, Any]) -> Config:
    try:
        return _source(params).load()
    except ConfigError as exc:
        click.echo(f"sollol-proxy: configuration error: {exc}", err=True)
        sys.exit(2)


def _setup_logging(level: str, log_format: str = "plain") -> None:
    setup_logging(level, log_format)


@contextlib.contextmanager
def _startup_errors() -> Iterator[None]:
    """A process that cannot start says why in one line and exits with 2, as a bad config does."""
    try:
        yield
    except StartupError as exc:
        click.echo(f"sollol-proxy: {exc}", err=True)
        sys.exit(2)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@_config_options
@click.version_option(__version__, prog_name="sollol-proxy")
@click.pass_context
def main(ctx: click.Context, **params: Any) -> None:
    """Serve one Ollama-compatible address in front of a fleet of Ollama nodes."""
    ctx.obj = params
    if ctx.invoked_subcommand is None:
        config = _load_or_exit(params)
        _setup_logging(config.log_level, config.log_format)
        from sollol_proxy.server import run

        with _startup_errors():
            run(config, _source(params))  # SIGHUP reloads from the same file, environment, flags


@main.command("check-config")
@_config_options
@click.pass_context
def check_config(ctx: click.Context, **params: Any) -> None:
    """Validate the configuration and print the effective result."""
    merged = {**(ctx.obj or {}), **{k: v for k, v in params.items() if v not in (None, ())}}
    config = _load_or_exit(merged)
    click.echo(yaml.safe_dump(config.to_dict(), sort_keys=False), nl=False)
    click.echo(f"# configuration OK: {len(config.nodes)} node(s)", err=True)


@main.command()
@click.option("--nodes", "count", default=3, show_default=True, help="Simulated nodes to start.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address of the proxy.")
@click.option("--port", default=11434, show_default=True, help="Port for the proxy.")
@click.option("--token-delay", default=0.05, show_default=True, help="Seconds per simulated token.")
@click.option("--load-delay", default=1.5, show_default=True, help="Seconds to load a model.")
def demo(count: int, host: str, port: int, token_delay: float, load_delay: float) -> None:
    """Start simulated Ollama nodes and the proxy in front of them (no Ollama needed)."""
    from sollol_proxy.demo import run_demo

    _setup_logging("info")
    with _startup_errors():
        run_demo(count=count, host=host, port=port, token_delay=token_delay, load_delay=load_delay)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=11435, show_default=True)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Model on disk (repeat); default llama3.2 and all-minilm.",
)
@click.option("--num-parallel", default=1, show_default=True)
@click.option("--token-delay", default=0.05, show_default=True)
@click.option("--load-delay", default=1.5, show_default=True)
def simulate(
    host: str,
    port: int,
    models: tuple[str, ...],
    num_parallel: int,
    token_delay: float,
    load_delay: float,
) -> None:
    """Run one simulated Ollama node (for trying the proxy, e.g. in docker-compose)."""
    from sollol_proxy.demo import run_simulated_node

    _setup_logging("info")
    with _startup_errors():
        run_simulated_node(
            host=host,
            port=port,
            models=list(models) or None,
            num_parallel=num_parallel,
            token_delay=token_delay,
            load_delay=load_delay,
        )


@main.group()
def keys() -> None:
    """API keys for `auth.keys` (only their SHA-256 goes in the configuration)."""


@keys.command("new")
@click.option("--name", default="client", show_default=True, help="The key's name (logs, metrics).")
@click.option("--scope", type=click.Choice(["user", "admin"]), default="user", show_default=True)
def keys_new(name: str, scope: str) -> None:
    """Print a new random key, its SHA-256 and the auth.keys entry to add to sollol.yaml."""
    from sollol_proxy.guard.keys import new_key

    key, digest = new_key()
    click.echo(f"key:    {key}")
    click.echo(f"sha256: {digest}")
    click.echo(f"auth.keys entry: {{name: {name}, sha256: {digest}, scope: {scope}}}")


@keys.command("hash")
def keys_hash() -> None:
    """Print the SHA-256 of a key read from standard input (for a key made elsewhere)."""
    from sollol_proxy.guard.keys import digest

    key = sys.stdin.readline().strip()
    if not key:
        click.echo("sollol-proxy: no key on standard input", err=True)
        sys.exit(2)
    click.echo(digest(key))


@main.group()
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
def bench_routing(seed: int, scenarios: tuple[str, ...], strategies: tuple[str, ...]) -> None:
    """Every strategy on the same seeded workloads; ratios to round_robin."""
    from sollol_proxy.bench.routing import run

    run(seed=seed, scenarios=list(scenarios) or None, strategies=strategies or None)


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
def bench_capacity(
    seed: int, fleets: tuple[str, ...], duration: float, warmup: float, load: float, repeat: int
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
    )


@main.command()
@click.option("--duration", default=60.0, show_default=True, help="Seconds of load.")
@click.option("--nodes", default=4, show_default=True, help="Simulated nodes.")
@click.option("--clients", default=16, show_default=True, help="Concurrent clients.")
@click.option("--seed", default=1, show_default=True, help="Seed of the faults and requests.")
def soak(duration: float, nodes: int, clients: int, seed: int) -> None:
    """Sustained load while random faults hit the nodes; reports failures and leaks."""
    from sollol_proxy.bench.soak import run

    report = run(duration=duration, nodes=nodes, clients=clients, seed=seed)
    leaked = (
        report.leaked_in_flight
        or report.leaked_slots
        or report.still_queued
        or report.node_in_flight
        or report.connections_in_use
    )
    sys.exit(1 if leaked or report.nodes_not_up else 0)
