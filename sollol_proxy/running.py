"""The running proxy's parts that outlive one configuration, and how a new one takes effect.

`app.py` builds a `Proxy` once; a reload (SIGHUP, a watched file) then goes through `apply`, the
one way a new configuration reaches the parts, the fleet's node watchers and the log level.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from sollol_proxy.config import Config
from sollol_proxy.config.policies import Priors
from sollol_proxy.fleet.decisions import DecisionLog
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.node import NodeState
from sollol_proxy.lifecycle.background import Background
from sollol_proxy.lifecycle.drain import Drain
from sollol_proxy.lifecycle.limits import Limits
from sollol_proxy.lifecycle.reload import LiveConfig, Reloader, keep_restart_only
from sollol_proxy.observe.history import History
from sollol_proxy.shared.state import SharedState

log = logging.getLogger("sollol.app")

# How often a removed node is checked for requests still in flight.
RETIRE_POLL_S = 0.2


class Reconfigurable(Protocol):
    def reconfigure(self, config: Config) -> object: ...


def node_priors(config: Config) -> dict[str, Priors]:
    return {n.name: n.priors for n in config.nodes if n.priors}


@dataclass
class Proxy:
    """The parts that hold the configuration, and what reloads it."""

    live: LiveConfig
    fleet: Fleet
    learner: Learner
    decisions: DecisionLog
    limits: Limits
    drain: Drain
    parts: tuple[Reconfigurable, ...]
    history: History
    reloader: Reloader | None = None
    shared: SharedState | None = None  # state.backend: redis
    tasks: Background = field(default_factory=Background)
    watchers: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # node name -> task

    def watch(self, node: NodeState, *, probe_first: bool) -> None:
        """Probe `node` for as long as it is in the fleet."""
        listener = self.history.state_changed
        node.health.listener = listener if self.shared is None else self.shared.listening(listener)

        async def watch() -> None:
            if probe_first:  # a node added by a reload: usable as soon as its first probe answers
                await self.fleet.refresh(node)
            await self.fleet.watch(node)

        self.watchers[node.name] = self.tasks.start(f"watch:{node.name}", watch())

    def apply(self, new: Config) -> None:
        """The one way a new configuration takes effect in a running proxy (reload)."""
        config = keep_restart_only(self.live.config, new)
        added, removed = self.fleet.reconfigure(config)
        for part in self.parts:
            part.reconfigure(config)
        self.learner.reconfigure(config.priors, node_priors(config))
        self.decisions.resize(config.decisions_kept)
        if config.log_level != self.live.config.log_level:
            logging.getLogger().setLevel(config.log_level.upper())
        for node in removed:
            log.info(
                "node %s removed: no new requests, %d in flight finish", node.name, node.in_flight
            )
            watcher = self.watchers.pop(node.name, None)
            self.tasks.start(f"retire:{node.name}", _retire(node, watcher))
        for node in added:
            log.info("node %s added (%s)", node.name, node.config.url)
            self.watch(node, probe_first=True)
        self.live.replace(config)
        log.info(
            "configuration generation %d in force: %d nodes (%d added, %d removed)",
            self.live.generation,
            len(self.fleet.nodes),
            len(added),
            len(removed),
        )

    def request_reload(self, why: str) -> None:
        """Reload from the startup sources in the background (SIGHUP)."""
        if self.reloader is None:
            log.warning("%s: no configuration source to reload from", why)
            return
        self.tasks.start(f"reload:{why}", self.reloader.reload(why))


async def _retire(node: NodeState, watcher: asyncio.Task[None] | None) -> None:
    """A removed node: its requests in flight finish, then its watcher stops."""
    # fleet.lease() counts without an event to wait on; a poll this slow costs nothing.
    while node.in_flight:  # noqa: ASYNC110
        await asyncio.sleep(RETIRE_POLL_S)
    if watcher is not None:
        watcher.cancel()
    log.info("node %s has left the fleet", node.name)
