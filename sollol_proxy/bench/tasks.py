"""Stopping a benchmark's measuring tasks (probes, samplers, watchers) when the load is over."""

from __future__ import annotations

import asyncio
from typing import Any


async def stop(*tasks: asyncio.Task[Any]) -> None:
    """Cancel them and wait until they end. One that failed before it was cancelled would
    otherwise leave its figures silently short: its error is raised here."""
    for task in tasks:
        task.cancel()
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            raise outcome
