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
from .affinity import PromptCache
from .config import Config
from .decisions import DecisionLog
from .fleet import Fleet
from .handlers import OllamaHandler
from .learning import Learner
from .management import Management
from .proxy import Forwarder
from .selection import Selector

log = logging.getLogger("sollol.app")

CONFIG = web.AppKey("config", Config)
FLEET = web.AppKey("fleet", Fleet)
LEARNER = web.AppKey("learner", Learner)
SESSION = web.AppKey("session", aiohttp.ClientSession)
FORWARDER = web.AppKey("forwarder", Forwarder)  # its retry budget, for the soak and metrics


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
    fleet, session = app[FLEET], app[SESSION]
    await fleet.refresh_all()
    healthy = [n.name for n in fleet.healthy()]
    log.info("fleet ready: %d/%d nodes healthy %s", len(healthy), len(fleet.nodes), healthy)
    watchers = [
        asyncio.create_task(fleet.watch(node), name=f"watch:{node.name}")
        for node in fleet.nodes.values()
    ]
    yield
    for task in watchers:
        task.cancel()
    for task in watchers:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await session.close()


async def create_app(config: Config) -> web.Application:
    session = new_upstream_session(config)
    prompt_cache = PromptCache()
    fleet = Fleet(config, session, prompt_cache)
    learner = Learner(config.priors, {n.name: n.priors for n in config.nodes if n.priors})
    decisions = DecisionLog(config.decisions_kept)
    forwarder = Forwarder(config, session, fleet)
    handler = OllamaHandler(
        config=config,
        fleet=fleet,
        selector=Selector(config, fleet, learner, prompt_cache, decisions),
        forwarder=forwarder,
        management=Management(config, session, fleet),
        learner=learner,
        prompt_cache=prompt_cache,
        admin=Admin(fleet, learner, decisions),
        sinks=(log_request,),
    )
    app = web.Application(client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[FLEET] = fleet
    app[LEARNER] = learner
    app[SESSION] = session
    app[FORWARDER] = forwarder
    app.on_response_prepare.append(_drop_server_header)
    app.cleanup_ctx.append(_background)
    app.router.add_route("*", "/{tail:.*}", handler.__call__)
    return app
