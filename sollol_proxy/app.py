"""The only module that wires things together: config in, a ready aiohttp application out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from .accesslog import log_request
from .admin import Admin
from .admission import Admission
from .affinity import PromptCache
from .config import Config
from .dashboard import Dashboard
from .decisions import DecisionLog
from .fleet import Fleet
from .handlers import OllamaHandler
from .learning import Learner
from .management import Management
from .metrics import Metrics
from .proxy import Forwarder
from .selection import Selector
from .stats import Stats

log = logging.getLogger("sollol.app")

CONFIG = web.AppKey("config", Config)
FLEET = web.AppKey("fleet", Fleet)
LEARNER = web.AppKey("learner", Learner)
SESSION = web.AppKey("session", aiohttp.ClientSession)
ADMISSION = web.AppKey("admission", Admission)
ADMIN = web.AppKey("admin", Admin)


async def _drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Ollama sends no Server header (reference 1.1); aiohttp would add its own.
    response.headers.popall("Server", None)


def new_upstream_session(config: Config) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        # Streams are long-lived; a pool limit would queue requests inside the proxy, unseen.
        connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
        # Timeouts are applied per phase by the proxy (first byte, idle read), not per request.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.timeouts.connect),
        auto_decompress=False,  # bytes pass through exactly as the node sent them
        # Only the client's own headers go to the node: aiohttp would add these by itself.
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Every background task is started, cancelled and awaited here."""
    fleet, session, admission = app[FLEET], app[SESSION], app[ADMISSION]
    await fleet.refresh_all()
    healthy = [n.name for n in fleet.healthy()]
    log.info("fleet ready: %d/%d nodes healthy %s", len(healthy), len(fleet.nodes), healthy)
    tasks = [
        asyncio.create_task(fleet.watch(node), name=f"watch:{node.name}")
        for node in fleet.nodes.values()
    ]
    tasks.append(asyncio.create_task(admission.run(), name="admission"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await session.close()


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """`metrics.port`: /metrics on a port of its own, for scrapers kept off the client port."""
    config = app[CONFIG]
    if config.metrics_port is None:
        yield
        return
    admin = app[ADMIN]

    async def metrics(request: web.Request) -> web.Response:
        return admin.metrics()

    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(metrics_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.metrics_port, reuse_address=True).start()
    log.info("metrics on %s:%d/metrics", config.host, config.metrics_port)
    yield
    await runner.cleanup()


async def create_app(config: Config) -> web.Application:
    session = new_upstream_session(config)
    prompt_cache = PromptCache()
    fleet = Fleet(config, session, prompt_cache)
    learner = Learner(config.priors, {n.name: n.priors for n in config.nodes if n.priors})
    decisions = DecisionLog(config.decisions_kept)
    admission = Admission(config.queue)
    metrics = Metrics(fleet, learner, admission)
    stats = Stats(fleet, learner)
    admin = Admin(
        fleet,
        learner,
        decisions,
        admission,
        metrics,
        stats,
        Dashboard(fleet, learner, decisions, stats, admission),
    )
    handler = OllamaHandler(
        config=config,
        fleet=fleet,
        selector=Selector(config, fleet, learner, prompt_cache, decisions),
        forwarder=Forwarder(config, session, fleet),
        management=Management(config, session, fleet),
        learner=learner,
        prompt_cache=prompt_cache,
        admin=admin,
        admission=admission,
        sinks=(log_request, metrics.observe, stats.observe),
    )
    app = web.Application(client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[FLEET] = fleet
    app[LEARNER] = learner
    app[SESSION] = session
    app[ADMISSION] = admission
    app[ADMIN] = admin
    app.on_response_prepare.append(_drop_server_header)
    app.cleanup_ctx.append(_background)
    app.cleanup_ctx.append(_metrics_listener)
    app.router.add_route("*", "/{tail:.*}", handler.__call__)
    return app
