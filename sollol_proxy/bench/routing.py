"""Routing strategies compared on the same seeded workloads, on simulated Ollama clusters.

The simulated nodes follow Ollama's scheduler physics (slots per model, one load at a time,
eviction under VRAM, a per-slot prompt prefix cache, prefill and decode speed), time-scaled so
that a run takes seconds. Every strategy runs every workload with fresh nodes and a fresh proxy,
given only the nodes' URLs (their slots and memory are learned); results are reported as ratios
to round_robin. `pin_groups` is a baseline, not a strategy: each group of conversations is
pinned to one node with `X-Sollol-Node` (group i to node i mod n), the rest goes to the least
loaded node. `nginx_least_conn` is nginx (least_conn, no buffering) in front of the same nodes,
when Debian's nginx is installed: the least-connections balancer a proxy replaces.
`performance_told` is `performance` told each node's `num_parallel`, the one row not given
URLs only: beside `performance` it shows what learning the slots costs.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO

import aiohttp
import orjson

from sollol_proxy.bench import nginx
from sollol_proxy.bench.workloads import SCENARIOS, Call, Scenario, Session
from sollol_proxy.config import load_config
from sollol_proxy.server import start_proxy
from sollol_proxy.simulator import SimulatedNode
from sollol_proxy.simulator.kvcache import SLOT_PROMPT_SIMILARITY, SlotUse
from sollol_proxy.wire.headers import NODE_HEADER, QUEUE_HEADER, ROUTE_HEADER

STRATEGIES = (
    "round_robin",
    "random",
    "least_loaded",
    "nginx_least_conn",
    "pin_groups",
    "performance",
    "performance_told",
)
LOGGED_HEADERS = (NODE_HEADER, ROUTE_HEADER, QUEUE_HEADER)
LOGGED_TIMINGS = ("prompt_eval_count", "prompt_eval_duration", "load_duration", "total_duration")
PIN_GROUPS = "pin_groups"
NGINX = "nginx_least_conn"
TOLD = "performance_told"


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    errors: int = 0
    loads: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0  # chat requests the nodes served
    hits: int = 0  # of those, the ones that reused more than 10% of their prompt from a slot
    elapsed: float = 0.0  # from the first request to the last answer
    # The proxy's own prefills of a lone system prompt into an idle slot (forward/warmup.py): not
    # clients' requests, so counted apart from the prompt tokens and hits above.
    warmups: int = 0
    # With `--requests`: one record per request (what a tail is made of: where it went, why,
    # how long it waited in the proxy, what its node says it prefilled).
    log: list[dict[str, object]] | None = None


async def _send(
    http: aiohttp.ClientSession,
    url: str,
    call: Call,
    result: Result,
    headers: dict[str, str] | None = None,
) -> str:
    body = orjson.dumps(
        {
            "model": call.model,
            "messages": call.messages,
            "stream": True,
            "options": {"num_predict": call.num_predict},
        }
    )
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    failed = False
    routed: dict[str, str] = {}
    final: dict[str, object] = {}
    try:
        async with http.post(url + "/api/chat", data=body, headers=headers) as response:
            if result.log is not None:
                routed = {h: response.headers.get(h, "") for h in LOGGED_HEADERS}
            async for line in response.content:
                if first is None:
                    first = time.perf_counter() - start
                obj = orjson.loads(line)
                if "error" in obj or response.status != 200:
                    failed = True
                    break
                parts.append(obj["message"]["content"])
                if obj.get("done"):
                    final = obj
    except aiohttp.ClientError:
        failed = True
    # A failed request still counts, at the time it took to fail: failures must not make a
    # strategy's percentiles look better.
    elapsed = time.perf_counter() - start
    ttft = elapsed if first is None else first
    result.errors += failed
    result.ttft.append(ttft)
    result.total.append(elapsed)
    if result.log is not None:
        result.log.append(
            {
                "start": start,
                "ttft": ttft,
                "total": elapsed,
                "failed": failed,
                "turn": len(call.messages),
                "system": str(call.messages[0]["content"])[:40],
                **{h.lower(): v for h, v in routed.items()},
                **{f: final.get(f) for f in LOGGED_TIMINGS},
            }
        )
    return "" if failed else "".join(parts)


async def _session(
    http: aiohttp.ClientSession,
    url: str,
    session: Session,
    result: Result,
    pin: str | None,
) -> None:
    await asyncio.sleep(session.start)
    messages = [{"role": "system", "content": session.system}]
    headers = {NODE_HEADER: pin} if pin else None
    for turn, question in enumerate(session.questions):
        messages.append({"role": "user", "content": question})
        answer = await _send(
            http, url, Call(session.model, list(messages), session.num_predict), result, headers
        )
        messages.append({"role": "assistant", "content": answer})
        think = session.think
        await asyncio.sleep(think if isinstance(think, float | int) else think[turn])


async def _timed(
    http: aiohttp.ClientSession, url: str, call: Call, result: Result, t0: float
) -> None:
    await asyncio.sleep(max(0.0, t0 + call.at - time.perf_counter()))
    await _send(http, url, call, result)


async def run_scenario(scenario: Scenario, strategy: str, *, log: bool = False) -> Result:
    nodes = [SimulatedNode(**spec) for spec in scenario.nodes]
    for node in nodes:
        await node.start(port=0)
    if scenario.preload:
        async with aiohttp.ClientSession() as http:
            for node in nodes:
                for name in node.model_names():
                    async with http.post(node.url + "/api/generate", json={"model": name}) as r:
                        await r.read()
                node.stats.reset()
    result = Result(log=[] if log else None)
    try:
        async with (
            _front(strategy, nodes) as url,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
        ):
            t0 = time.perf_counter()
            await asyncio.gather(
                *(
                    _session(http, url, s, result, _pin(strategy, s, nodes))
                    for s in scenario.sessions
                ),
                *(_timed(http, url, c, result, t0) for c in scenario.calls),
            )
            result.elapsed = time.perf_counter() - t0
    finally:
        for node in nodes:
            result.loads += node.stats.loads
            clients = [use for use in node.slot_uses if not _is_warmup(use)]
            result.warmups += len(node.slot_uses) - len(clients)
            result.prompt_tokens += sum(use.prompt_tokens for use in clients)
            result.cached_tokens += sum(use.cached_tokens for use in clients)
            result.requests += len(clients)
            result.hits += sum(
                use.cached_tokens > SLOT_PROMPT_SIMILARITY * use.prompt_tokens for use in clients
            )
            await node.stop()
    return result


def _is_warmup(use: SlotUse) -> bool:
    """A prompt of one system message: the clients' always have a question after it."""
    return use.prompt.startswith("<|system|>") and use.prompt.rfind("<|") == 0


@asynccontextmanager
async def _front(strategy: str, nodes: list[SimulatedNode]) -> AsyncIterator[str]:
    """The URL the clients use: nginx, or a fresh proxy given only the nodes' URLs."""
    if strategy == NGINX:
        async with nginx.least_conn([n.url for n in nodes]) as url:
            yield url
        return
    config = load_config(
        None,
        env={},
        overrides={
            "listen.host": "127.0.0.1",
            "listen.port": 0,
            "routing.strategy": {PIN_GROUPS: "least_loaded", TOLD: "performance"}.get(
                strategy, strategy
            ),
            "health.interval": 0.5,
            "inventory.interval": 5,
            "log_level": "warning",
            # Zero configuration: the nodes' slots and memory are theirs to know, the proxy's
            # to learn. Names only label them (pin_groups pins by name).
            "nodes": [_node_config(strategy, n) for n in nodes],
        },
    )
    proxy = await start_proxy(config)
    try:
        yield proxy.url
    finally:
        await proxy.stop()


def _node_config(strategy: str, node: SimulatedNode) -> dict[str, object]:
    """URL and name only, or for `performance_told` the node's slots too (what issue #11's
    discovery has to learn, given: the comparison shows what learning them costs)."""
    told = {"num_parallel": node.num_parallel} if strategy == TOLD else {}
    return {"url": node.url, "name": node.name, **told}


def _pin(strategy: str, session: Session, nodes: list[SimulatedNode]) -> str | None:
    return nodes[session.group % len(nodes)].name if strategy == PIN_GROUPS else None


def _q(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def _rate(result: Result) -> float:
    """Requests answered per second of the run."""
    return len(result.total) / result.elapsed if result.elapsed else 0.0


def _row(strategy: str, result: Result, base: Result) -> str:
    def ratio(value: float, reference: float) -> str:
        return f"{value / reference:.2f}" if reference else "-"

    hit = result.cached_tokens / result.prompt_tokens if result.prompt_tokens else 0.0
    rate, base_rate = _rate(result), _rate(base)
    cells = [
        f"{_q(result.ttft, 50):.3f} ({ratio(_q(result.ttft, 50), _q(base.ttft, 50))})",
        f"{_q(result.ttft, 95):.3f} ({ratio(_q(result.ttft, 95), _q(base.ttft, 95))})",
        f"{_q(result.total, 50):.3f} ({ratio(_q(result.total, 50), _q(base.total, 50))})",
        f"{_q(result.total, 95):.3f} ({ratio(_q(result.total, 95), _q(base.total, 95))})",
        f"{result.loads} ({ratio(result.loads, base.loads)})",
        f"{hit:.0%}",
        f"{result.hits / result.requests:.0%}" if result.requests else "-",
        f"{rate:.2f} ({ratio(rate, base_rate)})",
        str(result.errors),
        str(result.warmups),
    ]
    return f"| {strategy} | " + " | ".join(cells) + " |"


async def benchmark(
    seed: int,
    scenarios: list[str],
    strategies: tuple[str, ...] = STRATEGIES,
    requests: IO[bytes] | None = None,
) -> str:
    """The table; with `requests`, also one JSON line per request (its scenario, strategy,
    timings, the routing headers it got and its final object's prefill counts)."""
    out = []
    if NGINX in strategies and not nginx.available():
        strategies = tuple(s for s in strategies if s != NGINX)
        out.append(f"({NGINX} left out: nginx is not installed)")
    for name in scenarios:
        scenario = SCENARIOS[name](seed)
        results = {
            strategy: await run_scenario(scenario, strategy, log=requests is not None)
            for strategy in strategies
        }
        if requests is not None:
            for strategy, result in results.items():
                for record in result.log or ():
                    line = {"scenario": name, "seed": seed, "strategy": strategy, **record}
                    requests.write(orjson.dumps(line) + b"\n")
        base = results.get("round_robin") or next(iter(results.values()))
        out.append(
            f"\n**{scenario.name}**: {scenario.description} (seconds; ratio to round_robin)\n"
        )
        out.append(
            "| strategy | TTFT p50 | TTFT p95 | total p50 | total p95 | model loads "
            "| prompt tokens cached | requests hitting | requests/s | errors | warm-ups |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        out.extend(_row(strategy, result, base) for strategy, result in results.items())
    return "\n".join(out)


def run(
    seed: int = 7,
    scenarios: list[str] | None = None,
    strategies: tuple[str, ...] | None = None,
    requests: IO[bytes] | None = None,
) -> None:
    table = benchmark(seed, scenarios or list(SCENARIOS), strategies or STRATEGIES, requests)
    print(asyncio.run(table))
