"""Running the proxy: bind, serve, reload, drain, stop. Used by the CLI, the demo, the benchmarks
and the tests."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import resource
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from sollol_proxy.app import DATAPLANE, PROXY, create_app
from sollol_proxy.config import Config
from sollol_proxy.lifecycle.reload import ConfigSource
from sollol_proxy.lifecycle.startup import cannot_listen

log = logging.getLogger("sollol.server")

# After the grace period: how long cut requests get to write their error to the client, then
# how long aiohttp waits for each connection before closing it regardless.
CUT_WRITE_S = 2.0
CLOSE_S = 1.0


@dataclass
class RunningProxy:
    runner: web.AppRunner
    listener: asyncio.Server
    url: str
    stopped: bool = False

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting at once, let requests in flight finish for up to `grace` seconds (the
        configured `shutdown.grace` by default), end the rest with an error, then close."""
        if self.stopped:
            return
        self.stopped = True
        proxy = self.runner.app[PROXY]
        if grace is None:
            grace = proxy.live.config.shutdown_grace
        self.listener.close()  # new connections are refused from now on
        if self.runner.server is not None:
            # Idle keep-alive connections close now; busy ones after their current answer.
            self.runner.server.pre_shutdown()
        in_flight = proxy.drain.in_flight
        if in_flight:
            log.info("draining %d request(s) in flight, for up to %gs", in_flight, grace)
        if not await proxy.drain.wait(grace):
            await proxy.drain.cut_all(CUT_WRITE_S)
        if in_flight:
            log.info(
                "shutdown: %d request(s) finished, %d cut by the %gs grace period",
                in_flight - proxy.drain.cut,
                proxy.drain.cut,
                grace,
            )
        await self.runner.cleanup()  # closes connections, then cancels the background tasks


async def start_proxy(config: Config, source: ConfigSource | None = None) -> RunningProxy:
    """Serve `config`; with `source`, the app can reload from it (SIGHUP, `reload.watch`).
    Raises StartupError, with nothing left open, when the port cannot be bound."""
    loop = asyncio.get_running_loop()
    # The listening socket is bound before anything else exists (no node probed, no session
    # open): a port in use fails at once and leaves nothing behind. It accepts only once the
    # app is ready. It is the proxy's own (not a TCPSite) so that every connection gets the
    # proxy's protocol (limits.py); aiohttp's Server still tracks and shuts down connections.
    accepts: list[Callable[[], asyncio.BaseProtocol]] = []
    tls = tls_context(config)
    try:
        listener = await loop.create_server(
            lambda: accepts[0](),
            config.host,
            config.port,
            reuse_address=True,
            start_serving=False,
            ssl=tls,
            # A TLS handshake is part of getting a request's headers: the same bound.
            ssl_handshake_timeout=config.client_limits.header_timeout if tls else None,
        )
    except OSError as exc:
        raise cannot_listen(config.host, config.port, exc, "choose another with --port") from None
    try:
        app = await create_app(config, source)
    except BaseException:
        listener.close()
        raise
    # handler_cancellation: a client that disconnects cancels its handler at once, which closes
    # the upstream request and frees the node's slot (reference 1.4).
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=CLOSE_S)
    try:
        await runner.setup()
    except BaseException:
        listener.close()
        await runner.cleanup()  # what started before the failure: the upstream session
        raise
    assert runner.server is not None
    aiohttp_protocol = app[PROXY].limits.protocol_factory(
        runner.server,
        loop,
        # auto_decompress=False: a compressed request body is forwarded as the client's
        # bytes, with its Content-Encoding, for the node to accept or refuse as Ollama does.
        auto_decompress=False,
        access_log=None,
    )
    if config.engine == "fast":
        accepts.append(app[DATAPLANE].protocol_factory(runner.server, aiohttp_protocol))
    else:
        accepts.append(aiohttp_protocol)
    try:
        await _listen(listener)
    except OSError as exc:
        listener.close()
        await runner.cleanup()
        raise cannot_listen(config.host, config.port, exc, "choose another with --port") from None
    port = listener.sockets[0].getsockname()[1] if listener.sockets else config.port
    host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
    scheme = "https" if tls else "http"
    return RunningProxy(runner, listener, f"{scheme}://{host}:{port}")


async def _listen(listener: asyncio.Server) -> None:
    """Start accepting on the bound socket. Bound but not yet listening, its port could be
    taken in the meantime by another process binding with SO_REUSEADDR and listening first;
    then listen() fails. asyncio raises that; uvloop swallows it and leaves no socket (None, or
    one closed) while it says it is serving."""
    await listener.start_serving()
    if any(sock is None or sock.fileno() == -1 for sock in listener.sockets):
        raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))


def tls_context(config: Config) -> ssl.SSLContext | None:
    """`listen.tls_cert`/`listen.tls_key`: the listener speaks HTTPS (the loader checked both
    files load)."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one, as Go does for Ollama: every client
    connection and every node connection is a file descriptor, and the usual soft limit of 1024
    is below `limits.max_connections` plus the node connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve_forever(config: Config, source: ConfigSource | None = None) -> None:
    proxy = await start_proxy(config, source)
    # What start-up made (modules, the app, its parts) lives as long as the process: the
    # garbage collector need not walk it again in every full collection.
    gc.freeze()
    log.info("sollol-proxy listening on %s:%s (%s)", config.host, config.port, proxy.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, proxy.runner.app[PROXY].request_reload, "SIGHUP")
    try:
        await stop.wait()
    finally:
        log.info("shutting down: no new connections")
        await proxy.stop()
    log.info("stopped")


def run(config: Config, source: ConfigSource | None = None) -> None:
    """Serve until SIGINT/SIGTERM (reloading on SIGHUP), on uvloop when it is installed."""
    raise_open_files_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_forever(config, source))
    else:
        uvloop.run(serve_forever(config, source))
