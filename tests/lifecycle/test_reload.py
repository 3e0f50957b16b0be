"""lifecycle/reload: the config watcher outlives whatever loading the configuration raises."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sollol_proxy.config import Config, load_config
from sollol_proxy.lifecycle.reload import ConfigSource, Reloader


class FlakySource(ConfigSource):
    """Raises what a defect of the loader would, then loads a changed configuration."""

    def __init__(self, fail: BaseException, then: Config) -> None:
        super().__init__()
        self.fail: BaseException | None = fail
        self.then = then

    def load(self) -> Config:
        if self.fail is not None:
            fail, self.fail = self.fail, None
            raise fail
        return self.then


async def test_the_watcher_goes_on_after_a_loader_defect(caplog: pytest.LogCaptureFixture) -> None:
    running = load_config(None, env={"SOLLOL_NODES": "gpu1"})
    changed = load_config(None, env={"SOLLOL_NODES": "gpu1,gpu2"})
    applied: list[Config] = []
    done = asyncio.Event()

    def apply(config: Config) -> None:
        applied.append(config)
        done.set()

    reloader = Reloader(FlakySource(RuntimeError("a defect"), changed), apply, running)
    watcher = asyncio.create_task(reloader.watch(lambda: 0.01))
    try:
        async with asyncio.timeout(5):
            await done.wait()
    finally:
        watcher.cancel()
    assert applied == [changed]
    failed = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert failed and "loading the configuration failed" in failed[0].getMessage()
