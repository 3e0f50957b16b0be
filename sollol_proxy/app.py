"""The only module that wires things together: config in, a ready aiohttp application out."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

import sollol_proxy.observe.metrics_port as metrics_port
from sollol_proxy.admission.admission import Admission
from sollol_proxy.config import Config
from sollol_proxy.dataplane.plane import DataPlane
from sollol_proxy.embed.api import BatchApi
from sollol_proxy.embed.jobs import JobRunner
from sollol_proxy.embed.service import Embeddings
from sollol_proxy.embed.speed import EmbedSpeed
from sollol_proxy.embed.subcall import SubCalls
from sollol_proxy.fleet.decisions import DecisionLog
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.fleet.prompt_cache import PromptCache
from sollol_proxy.fleet.selector import Selector
from sollol_proxy.forward.forwarder import Forwarder
from sollol_proxy.forward.inventory import LiveInventory
from sollol_proxy.forward.management import Management
from sollol_proxy.forward.pool import NodePool
from sollol_proxy.forward.session import upstream_session
from sollol_proxy.forward.views import FleetViews
from sollol_proxy.forward.warmup import Warmer
from sollol_proxy.guard.guard import Guard
from sollol_proxy.guard.hosts import HostCheck
from sollol_proxy.guard.metrics import KeyCollector
from sollol_proxy.handlers import OllamaHandler
from sollol_proxy.lifecycle.background import Background
from sollol_proxy.lifecycle.cors import Cors
from sollol_proxy.lifecycle.drain import Drain
from sollol_proxy.lifecycle.limits import Limits
from sollol_proxy.lifecycle.reload import ConfigSource, LiveConfig, Reloader
from sollol_proxy.observe.accesslog import log_request
from sollol_proxy.observe.admin import Admin
from sollol_proxy.observe.batches import BatchCollector, Batches
from sollol_proxy.observe.dashboard import Dashboard
from sollol_proxy.observe.history import History
from sollol_proxy.observe.metrics import Metrics
from sollol_proxy.observe.stats import Stats
from sollol_proxy.routing.performance import Performance
from sollol_proxy.running import Proxy, node_priors
from sollol_proxy.shared.prompt_cache import SharedPromptCache
from sollol_proxy.shared.state import SharedState
from sollol_proxy.wire.body_budget import BodyBudget, BodyCollector

log = logging.getLogger("sollol.app")

FLEET = web.AppKey("fleet", Fleet)
LEARNER = web.AppKey("learner", Learner)
PROXY = web.AppKey("proxy", Proxy)
SESSION = web.AppKey("session", aiohttp.ClientSession)
ADMISSION = web.AppKey("admission", Admission)
ADMIN = web.AppKey("admin", Admin)
FORWARDER = web.AppKey("forwarder", Forwarder)  # its retry budget, for the soak and metrics
INVENTORY = web.AppKey("inventory", LiveInventory)
JOBS = web.AppKey("jobs", JobRunner)
DATAPLANE = web.AppKey("dataplane", DataPlane)
POOL = web.AppKey("pool", NodePool)  # with listen.engine: fast


async def _drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Ollama sends no Server header (reference 1.1); aiohttp would add its own.
    response.headers.popall("Server", None)


def apply_config(app: web.Application, new: Config) -> None:
    """A new configuration takes effect in a running app (reload; tests and benchmarks)."""
    app[PROXY].apply(new)


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Every background task is started here, or by a reload through `proxy.tasks`; all are
    cancelled and awaited here."""
    proxy = app[PROXY]
    try:
        await _start_background(app, proxy)
    except BaseException:  # start-up failed: the cleanup after `yield` will never run
        await _stop_background(proxy)
        raise
    yield
    await _stop_background(proxy)


async def _start_background(app: web.Application, proxy: Proxy) -> None:
    fleet = proxy.fleet
    if proxy.shared is not None:
        for name, task in proxy.shared.tasks().items():
            proxy.tasks.start(name, task)
    await fleet.refresh_all()
    healthy = [n.name for n in fleet.healthy()]
    log.info("fleet ready: %d/%d nodes healthy %s", len(healthy), len(fleet.nodes), healthy)
    for node in fleet.nodes.values():
        proxy.watch(node, probe_first=False)
    proxy.tasks.start("admission", app[ADMISSION].run())
    proxy.tasks.start("batch-jobs", app[JOBS].run())
    if (pool := app.get(POOL)) is not None:
        proxy.tasks.start("node-pool", pool.run())
    proxy.tasks.start("history", proxy.history.run())
    if proxy.reloader is not None and proxy.live.config.reload_watch:
        proxy.tasks.start(
            "reload:watch", proxy.reloader.watch(lambda: proxy.live.config.reload_interval)
        )


async def _stop_background(proxy: Proxy) -> None:
    await proxy.tasks.close()
    if proxy.shared is not None:
        await proxy.shared.close()


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    """The session to the nodes is closed last, once nothing uses it, and also when start-up
    fails after it was made."""
    yield
    if (pool := app.get(POOL)) is not None:
        pool.close()
    await app[SESSION].close()


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """`metrics.port`: /metrics on a port of its own, for scrapers kept off the client port."""
    config = app[PROXY].live.config
    if config.metrics_port is None:
        yield
        return
    async with metrics_port.serve(config.host, config.metrics_port, app[ADMIN].metrics):
        yield


async def create_app(config: Config, source: ConfigSource | None = None) -> web.Application:
    session = upstream_session(config)
    shares = config.state.backend == "redis"
    prompt_cache = SharedPromptCache() if shares else PromptCache()  # replicas share its map
    fleet = Fleet(config, session, prompt_cache)
    learner = Learner(config.priors, node_priors(config))
    live = LiveConfig(config)
    admission = Admission(config.queue)
    shared = None
    if isinstance(prompt_cache, SharedPromptCache):
        shared = SharedState(
            config.state,
            fleet,
            admission,
            lambda: live.config.health_interval,
            config.decisions_kept,
            learner,
            prompt_cache,
        )
    decisions = shared.decisions if shared is not None else DecisionLog(config.decisions_kept)
    selector = Selector(config, fleet, learner, prompt_cache, decisions)
    # listen.engine: fast also relays on the lean client's pooled connections (forward/pool.py).
    pool = (
        NodePool(config.timeouts.connect, config.client_limits.tcp_keepalive)
        if config.engine == "fast"
        else None
    )
    forwarder = Forwarder(config, session, fleet, pool)
    tasks = Background()
    # Warm-ups copy shared system prompts into idle slots (issue #18); not across replicas.
    warmer = (
        None
        if shares
        else Warmer(
            config.warmups,
            fleet,
            admission,
            prompt_cache,
            session,
            tasks,
            lambda model: isinstance(selector.strategy_for(model), Performance),
            selector.holding,
        )
    )
    inventory = LiveInventory(config, fleet, tasks)
    management = Management(config, session, fleet, inventory)
    guard = Guard(config)
    hosts = HostCheck(config)
    speed = EmbedSpeed()
    calls = SubCalls(config, fleet, selector, admission, forwarder, learner, prompt_cache, speed)
    embeddings = Embeddings(calls)
    jobs = JobRunner(calls, config)
    batches = BatchApi(jobs, config)
    metrics = Metrics(fleet, learner, admission, forwarder.budget, prompt_cache)
    metrics.registry.register(KeyCollector(guard))
    shown = Batches(jobs, speed, fleet)
    metrics.registry.register(BatchCollector(shown))
    if shared is not None:
        metrics.registry.register(shared.collector)
    stats = Stats(fleet, learner, prompt_cache)
    history = History(fleet, admission)
    admin = Admin(
        fleet,
        learner,
        decisions,
        live,
        admission,
        metrics,
        stats,
        Dashboard(
            fleet, learner, decisions, stats, admission, shown, shared.alerts if shared else None
        ),
        history,
        prompt_cache,
    )
    bodies = BodyBudget(config.max_body_memory, config.max_body_bytes)
    handler = OllamaHandler(
        config=config,
        fleet=fleet,
        selector=selector,
        forwarder=forwarder,
        management=management,
        learner=learner,
        prompt_cache=prompt_cache,
        admin=admin,
        admission=admission,
        views=FleetViews(fleet, inventory),
        sinks=(log_request, metrics.observe, stats.observe, history.observe, guard.observe),
        embeddings=embeddings,
        batches=batches,
        bodies=bodies,
        warmer=warmer,
    )
    metrics.registry.register(BodyCollector(bodies))
    limits = Limits(config, bodies)
    cors = Cors(config)
    proxy = Proxy(
        live=live,
        fleet=fleet,
        learner=learner,
        decisions=decisions,
        limits=limits,
        drain=Drain(),
        parts=(
            selector,
            forwarder,
            management,
            handler,
            limits,
            admission,
            cors,
            inventory,
            guard,
            hosts,
            embeddings,
            jobs,
            batches,
            *(() if warmer is None else (warmer,)),
        ),
        tasks=tasks,
        history=history,
        shared=shared,
    )
    app = web.Application(
        client_max_size=config.max_body_bytes,
        # Outermost first: CORS answers for everything the proxy says itself; drain tracks
        # everything; limits answers over-limit connections and bad request targets; then the
        # Host check and the keys (Ollama checks Host after CORS, and preflights carry no key).
        middlewares=(
            cors.middleware,
            proxy.drain.middleware,
            limits.middleware,
            hosts.middleware,
            guard.middleware,
        ),
    )
    if source is not None:
        proxy.reloader = Reloader(source, proxy.apply, config)
    app[PROXY] = proxy
    app[FLEET] = fleet
    app[LEARNER] = learner
    app[SESSION] = session
    if pool is not None:
        app[POOL] = pool
    app[ADMISSION] = admission
    app[ADMIN] = admin
    app[FORWARDER] = forwarder
    app[INVENTORY] = inventory
    app[JOBS] = jobs
    # The hot routes' front-end (listen.engine: fast): the same middlewares and handler.
    app[DATAPLANE] = DataPlane(
        handler.__call__, app.middlewares, limits, app.on_response_prepare.send
    )
    app.on_response_prepare.append(_drop_server_header)
    app.on_response_prepare.append(cors.on_response_prepare)
    app.cleanup_ctx.append(_upstream_session)
    # The metrics port before the nodes: if it cannot be bound, start-up fails before any probe.
    app.cleanup_ctx.append(_metrics_listener)
    app.cleanup_ctx.append(_background)
    app.router.add_route("*", "/{tail:.*}", handler.__call__, expect_handler=limits.expect)
    return app
