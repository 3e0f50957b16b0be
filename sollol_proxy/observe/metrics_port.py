"""`/metrics` on a port of its own (`metrics.port`), for scrapers kept off the client port."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from sollol_proxy.lifecycle.startup import cannot_listen

log = logging.getLogger("sollol.app")


@contextlib.asynccontextmanager
async def serve(host: str, port: int, render: Callable[[], web.Response]) -> AsyncIterator[None]:
    async def metrics(request: web.Request) -> web.Response:
        return render()

    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(metrics_app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        fix = "choose another with metrics.port (SOLLOL_METRICS_PORT)"
        raise cannot_listen(host, port, exc, fix) from None
    log.info("metrics on %s:%d/metrics", host, port)
    try:
        yield
    finally:
        await runner.cleanup()
