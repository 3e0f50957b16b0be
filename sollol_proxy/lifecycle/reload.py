"""Hot reload: where the configuration comes from, which one is in force, and when to re-read it.

`running.Proxy.apply` applies a new configuration; this module loads it (the same file,
environment and command-line flags as at startup) and rejects an invalid one, keeping the old.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sollol_proxy.config import Config, ConfigError, load_config

log = logging.getLogger("sollol.reload")

# Read once when the process starts: changing them needs a restart.
RESTART_ONLY: dict[str, Callable[[Config], object]] = {
    "listen.host": lambda c: c.host,
    "listen.port": lambda c: c.port,
    "listen.tls_cert": lambda c: c.tls_cert,  # loaded when the socket is bound
    "listen.tls_key": lambda c: c.tls_key,
    "listen.engine": lambda c: c.engine,  # the listener's protocol is chosen at startup
    "timeouts.connect": lambda c: c.timeouts.connect,  # the upstream session's, made at startup
    "metrics.port": lambda c: c.metrics_port,  # its listener is bound at startup
    "log_format": lambda c: c.log_format,  # the log handlers are set up at startup
    "reload.watch": lambda c: c.reload_watch,  # the watcher is started (or not) at startup
    "batch.data_dir": lambda c: c.batch.data_dir,  # the job store resumes its jobs at startup
}


@dataclass(frozen=True)
class ConfigSource:
    """How the running configuration was built: file, then environment, then these overrides."""

    path: str | os.PathLike[str] | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    override_origins: Mapping[str, str] = field(default_factory=dict)

    def load(self) -> Config:
        return load_config(
            self.path, overrides=self.overrides, override_origins=self.override_origins
        )


@dataclass
class LiveConfig:
    """The configuration in force; `generation` counts the configurations applied (1 at start)."""

    config: Config
    generation: int = 1
    loaded_at: float = field(default_factory=time.time)

    def replace(self, config: Config) -> None:
        self.config = config
        self.generation += 1
        self.loaded_at = time.time()


def keep_restart_only(running: Config, new: Config) -> Config:
    """`new`, with the settings that need a restart as they are running (each change logged)."""
    for key, read in RESTART_ONLY.items():
        if read(running) != read(new):
            log.warning(
                "reload: %s changed from %r to %r; that needs a restart, the running value stays",
                key,
                read(running),
                read(new),
            )
    return replace(
        new,
        host=running.host,
        port=running.port,
        tls_cert=running.tls_cert,
        tls_key=running.tls_key,
        timeouts=replace(new.timeouts, connect=running.timeouts.connect),
        metrics_port=running.metrics_port,
        log_format=running.log_format,
        reload_watch=running.reload_watch,
        batch=replace(new.batch, data_dir=running.batch.data_dir),
    )


class Reloader:
    """Loads the configuration again on demand (SIGHUP) or when it changes (`reload.watch`)."""

    def __init__(self, source: ConfigSource, apply: Callable[[Config], None], running: Config):
        self._source = source
        self._apply = apply
        self._lock = asyncio.Lock()
        # What the last load gave: the watcher acts only when that changes.
        self._last: Config | str = running

    async def reload(self, why: str) -> bool:
        """Load and apply; an invalid configuration is logged and the running one stays."""
        async with self._lock:
            loaded = await self._load(why)
            if isinstance(loaded, str):
                return False
            self._apply(loaded)
            return True

    async def watch(self, interval: Callable[[], float]) -> None:
        """Re-load every `interval()` seconds and apply what changed (file or hosts file)."""
        while True:
            await asyncio.sleep(interval())
            async with self._lock:
                previous = self._last
                loaded = await self._load("the configuration changed", quiet_if=previous)
                if isinstance(loaded, Config) and loaded != previous:
                    self._apply(loaded)

    async def _load(self, why: str, quiet_if: Config | str | None = None) -> Config | str:
        try:
            loaded: Config | str = await asyncio.to_thread(self._source.load)
        except ConfigError as exc:
            loaded = str(exc)
        except (OSError, ValueError) as exc:  # anything else reading it: the watcher goes on
            loaded = f"cannot load the configuration: {exc}"
        except Exception as exc:  # a defect of the loader, not of the file: keep its traceback
            log.exception("reload (%s): loading the configuration failed", why)
            loaded = f"cannot load the configuration: {exc!r}"
        if loaded != quiet_if:
            if isinstance(loaded, str):
                log.error("reload (%s) rejected, the running configuration stays: %s", why, loaded)
            else:
                log.info("reload (%s): configuration loaded", why)
        self._last = loaded
        return loaded
