"""Running the proxy: bind, serve, stop. Used by the CLI, the demo, the benchmarks and the tests."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from .app import create_app
from .config import Config

log = logging.getLogger("sollol.server")


@dataclass
class RunningProxy:
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_proxy(config: Config) -> RunningProxy:
    app = await create_app(config)
    # handler_cancellation: a client that disconnects cancels its handler at once, which closes
    # the upstream request and frees the node's slot (reference 1.4).
    # auto_decompress=False: a compressed request body is forwarded as the client's bytes, with
    # its Content-Encoding, for the node to accept or refuse as Ollama does.
    runner = web.AppRunner(app, handler_cancellation=True, auto_decompress=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    port = sockets[0].getsockname()[1] if sockets else config.port
    host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
    return RunningProxy(runner, f"http://{host}:{port}")


async def serve_forever(config: Config) -> None:
    proxy = await start_proxy(config)
    log.info("sollol-proxy listening on %s:%s (%s)", config.host, config.port, proxy.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await proxy.stop()


def run(config: Config) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_forever(config))
    else:
        uvloop.run(serve_forever(config))
