"""The `sollol-proxy` command."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click
import yaml

from sollol_proxy import __version__
from sollol_proxy.bench.cli import bench
from sollol_proxy.config import Config, ConfigError, parse_node_list
from sollol_proxy.lifecycle.reload import ConfigSource
from sollol_proxy.lifecycle.startup import StartupError
from sollol_proxy.observe.logformat import setup_logging

_F = Callable[..., Any]
# The demo's and the simulator's own flags are checked by click, so that a bad one is a usage
# error (exit 2), not a traceback from the socket or the simulator.
_PORT = click.IntRange(0, 65535)
_DELAY = click.FloatRange(min=0)


def _config_options(func: _F) -> _F:
    options = [
        click.option(
            "-c",
            "--config",
            "config_path",
            # Not checked here: click would blame `--config` for what SOLLOL_CONFIG named; the
            # loader names the file and what is wrong with it.
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
    except ConfigError as exc:  # the demo's own configuration, from its flags
        click.echo(f"sollol-proxy: configuration error: {exc}", err=True)
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
@click.option(
    "--nodes",
    "count",
    type=click.IntRange(1, 64),
    default=3,
    show_default=True,
    help="Simulated nodes to start.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address of the proxy.")
@click.option("--port", type=_PORT, default=11434, show_default=True, help="Port for the proxy.")
@click.option(
    "--token-delay", type=_DELAY, default=0.05, show_default=True, help="Seconds per token."
)
@click.option(
    "--load-delay", type=_DELAY, default=1.5, show_default=True, help="Seconds to load a model."
)
def demo(count: int, host: str, port: int, token_delay: float, load_delay: float) -> None:
    """Start simulated Ollama nodes and the proxy in front of them (no Ollama needed)."""
    from sollol_proxy.demo import run_demo

    _setup_logging("info")
    with _startup_errors():
        run_demo(count=count, host=host, port=port, token_delay=token_delay, load_delay=load_delay)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=_PORT, default=11435, show_default=True)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Model on disk (repeat); default llama3.2 and all-minilm.",
)
@click.option("--num-parallel", type=click.IntRange(1, 1024), default=1, show_default=True)
@click.option("--token-delay", type=_DELAY, default=0.05, show_default=True)
@click.option("--load-delay", type=_DELAY, default=1.5, show_default=True)
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


main.add_command(bench)
