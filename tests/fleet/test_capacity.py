"""Capacity learned over real sockets: simulated nodes with hidden OLLAMA_NUM_PARALLEL and
OLLAMA_MAX_LOADED_MODELS, the proxy given their URLs only."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson

from sollol_proxy.app import LEARNER, apply_config
from sollol_proxy.config import load_config
from sollol_proxy.fleet import capacity
from sollol_proxy.fleet.snapshot import planned_victims
from tests.conftest import TEST_SETTINGS, Cluster, ClusterFactory, eventually
from tests.observe.test_metrics import scrape

MODEL = "llama3.2:latest"
TOKEN_DELAY = 0.01


async def generate(
    http: aiohttp.ClientSession, made: Cluster, model: str = "llama3.2", tokens: int = 10
) -> tuple[int, str, str]:
    """A streamed generate; returns status, the node that served it and X-Sollol-Queue-Ms."""
    body = orjson.dumps({"model": model, "prompt": "hello", "options": {"num_predict": tokens}})
    async with http.post(made.url + "/api/generate", data=body) as response:
        await response.read()
        return (
            response.status,
            response.headers.get("X-Sollol-Node", ""),
            response.headers.get("X-Sollol-Queue-Ms", ""),
        )


async def load(
    http: aiohttp.ClientSession,
    made: Cluster,
    clients: int,
    each: int,
    model: str = "llama3.2",
    tokens: int = 10,
) -> list[tuple[int, str, str]]:
    """`clients` clients sending `each` requests back to back."""

    async def client() -> list[tuple[int, str, str]]:
        return [await generate(http, made, model, tokens) for _ in range(each)]

    results = await asyncio.gather(*(client() for _ in range(clients)))
    return [r for rs in results for r in rs]


def believed(made: Cluster, model: str = MODEL) -> dict[str, int]:
    return {n.name: capacity.model_slots(n, model) for n in made.fleet.nodes.values()}


def node_names(made: Cluster) -> list[str]:
    return list(made.fleet.nodes)


async def test_each_nodes_slots_are_learned_from_urls_only(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        *(
            dict(
                name=f"p{p}",
                models=["llama3.2"],
                num_parallel=p,
                token_delay=TOKEN_DELAY,
                deterministic=False,
            )
            for p in (1, 2, 4)
        ),
        urls_only=True,
    )
    a, b, c = node_names(made)  # named host:port: the proxy was told nothing else
    assert believed(made) == {a: 1, b: 1, c: 1}
    results = await load(http, made, clients=10, each=8)
    assert all(status == 200 for status, _, _ in results)
    assert believed(made) == {a: 1, b: 2, c: 4}  # within 80 requests
    # Each node grew by one beyond what it proved, and none was raised to a peer's slots once
    # another had shown fewer: about 1.0 s was waited on the semaphores in all, most of it by
    # the 1-slot node raised to 2 by the first proof (doubling, raised further: 1.5 to 1.6 s).
    assert sum(node.stats.queue_wait for node in made.nodes) < 1.25
    nodes = {
        n["name"]: n
        for n in orjson.loads(await (await http.get(made.url + "/sollol/nodes")).read())["nodes"]
    }
    assert nodes[c]["num_parallel"] == "auto"
    slots = nodes[c]["capacity"]["models"][MODEL]
    assert slots["believed"] == 4 and slots["source"] == "learned" and slots["limit"] in (4, 5)
    assert nodes[c]["capacity"]["slots_per_model"] == 4
    samples = await scrape(http, made.url)
    assert samples[("sollol_node_slots_believed", frozenset({("node", c), ("model", MODEL)}))] == 4
    sources = {("node", a), ("model", MODEL), ("source", "learned")}
    assert samples[("sollol_node_slots_source", frozenset(sources))] == 1
    assert samples[("sollol_node_slots", frozenset({("node", b)}))] == 2


async def four_slots(cluster: ClusterFactory) -> Cluster:
    """One node of 4 hidden slots, given to the proxy by URL only."""
    return await cluster(
        dict(
            name="a",
            models=["llama3.2"],
            num_parallel=4,
            token_delay=TOKEN_DELAY,
            deterministic=False,
        ),
        urls_only=True,
    )


async def test_after_learning_four_slots_four_clients_never_wait_in_the_proxy(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await four_slots(cluster)
    (name,) = node_names(made)
    await load(http, made, clients=6, each=6)  # more clients than slots: it has to find out
    assert believed(made) == {name: 4}
    waited = made.nodes[0].stats.queue_wait
    results = await load(http, made, clients=4, each=5)
    assert {queued for _, _, queued in results} == {"0"}  # nobody waited in the proxy ...
    assert made.nodes[0].stats.queue_wait - waited < 0.05  # ... nor inside Ollama


async def test_learning_the_slots_makes_about_one_request_wait_inside_ollama(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # Twice as many clients as slots, so that the window could grow past the truth: it grows by
    # one, and one request at a time waits until the first wait is heard of (0.4 s in all, about
    # two requests' time, 0.2 s each); doubling let in up to 8, and about 1.7 s was waited.
    made = await four_slots(cluster)
    (name,) = node_names(made)
    await load(http, made, clients=8, each=6, tokens=20)
    assert believed(made) == {name: 4}
    assert made.nodes[0].stats.queue_wait < 0.9


async def test_a_node_restarted_with_more_slots_is_relearned(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(
            name="a",
            models=["llama3.2"],
            num_parallel=1,
            token_delay=TOKEN_DELAY,
            load_delay=0.3,  # a real load takes at least that: its load_duration shows it
            deterministic=False,
        ),
        urls_only=True,
        # No /api/ps between the restart and the next request: only its load shows the new runner.
        health__interval=30.0,
    )
    (name,) = node_names(made)
    await load(http, made, clients=4, each=6)
    assert believed(made) == {name: 1}
    assert made.fleet.nodes[name].beliefs.slots[MODEL].estimator.limit <= 2  # at most one probe
    await made.nodes[0].restart(num_parallel=4)
    for _ in range(8):
        await load(http, made, clients=6, each=4)
        if believed(made) == {name: 4}:
            break
    assert believed(made) == {name: 4}


async def test_a_node_that_dropped_a_stream_and_answers_again_is_relearned_at_once(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # A restart seen by nothing but a cut stream: no health probe in between, no load long
    # enough to show (the simulator loads at once), no /api/ps. The first answer after it
    # starts learning over, lifted to what the peer proved: the belief must not wait for a
    # burst of requests to prove one more slot (before, it stayed at its old single slot).
    made = await cluster(
        *(
            dict(
                name=name,
                models=["llama3.2"],
                num_parallel=slots,
                token_delay=TOKEN_DELAY,
                deterministic=False,
            )
            for name, slots in (("a", 1), ("b", 2))
        ),
        urls_only=True,
        health__interval=30.0,
    )
    a, b = node_names(made)
    await load(http, made, clients=4, each=6)
    estimator = made.fleet.nodes[a].beliefs.slots[MODEL].estimator
    assert believed(made) == {a: 1, b: 2} and estimator.source == "learned"

    async def long_one() -> None:
        with contextlib.suppress(aiohttp.ClientError):
            await generate(http, made, tokens=200)  # 2 s: still streaming at the restart

    busy = [asyncio.create_task(long_one()) for _ in range(4)]  # b takes 3 at most
    await eventually(lambda: made.fleet.nodes[a].beliefs.slots[MODEL].running > 0)
    await made.nodes[0].restart(num_parallel=4)
    for _ in range(20):  # one at a time: none proves more than one slot
        _, node, _ = await generate(http, made)
        if node == a:
            break
    assert node == a
    # Two beyond it until the first wait: the whole node restarted, maybe with more slots.
    assert (estimator.believed, estimator.source, estimator.limit) == (2, "probing", 4)
    await asyncio.gather(*busy)


async def test_a_configured_num_parallel_is_used_as_is_and_a_reload_changes_it(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2"], num_parallel=4, token_delay=TOKEN_DELAY)
    )
    overrides = {
        **TEST_SETTINGS,
        "nodes": [{"url": made.nodes[0].url, "name": "a", "num_parallel": 2}],
    }
    apply_config(made.proxy.runner.app, load_config(None, env={}, overrides=overrides))
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, made.fleet.nodes["a"].model_in_flight.get(MODEL, 0))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    await load(http, made, clients=6, each=4)
    watcher.cancel()
    assert most == 2  # the operator said 2: never more, although the node has 4
    assert capacity.slot_source(made.fleet.nodes["a"], MODEL) == "configured"
    assert believed(made) == {"a": 2}


async def test_an_unmeasured_node_is_believed_like_its_peers(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        *(
            dict(
                name=n,
                models=["llama3.2"],
                num_parallel=4,
                token_delay=TOKEN_DELAY,
                deterministic=False,
            )
            for n in ("a", "b")
        ),
        urls_only=True,
    )
    first, second = node_names(made)
    made.nodes[1].faults.refuse = True
    await eventually(lambda: not made.fleet.nodes[second].healthy)
    await load(http, made, clients=6, each=5)
    assert believed(made) == {first: 4, second: 4}  # never measured, believed like its peer
    assert capacity.slot_source(made.fleet.nodes[second], MODEL) == "default"


async def test_memory_bounds_are_learned_from_evictions_without_vram(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=["llama3.2", "qwen2.5:7b", "mistral"], max_loaded_models=2),
        urls_only=True,
    )
    (name,) = node_names(made)
    node = made.fleet.nodes[name]
    assert (capacity.max_loaded(node), capacity.vram_bytes(node)) == (3, None)
    for model in ("llama3.2", "qwen2.5:7b"):
        assert (await generate(http, made, model, tokens=2))[0] == 200
    await eventually(lambda: len(node.loaded) == 2)
    assert (await generate(http, made, "mistral", tokens=2))[0] == 200  # evicts one of them
    await eventually(lambda: capacity.max_loaded(node) == 2)
    assert node.beliefs.memory.source == "evictions" and capacity.vram_bytes(node)
    # Eviction foresight without `vram:`: a third model now would push one out.
    await eventually(lambda: len(node.loaded) == 2)
    missing = next(m for m in node.models if m not in node.loaded)
    assert planned_victims(node, missing, made.proxy.runner.app[LEARNER])


async def test_a_node_without_evictions_is_believed_to_hold_what_its_peers_hold(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    spec = dict(models=["llama3.2", "qwen2.5:7b", "mistral"], max_loaded_models=2)
    made = await cluster(dict(spec, name="a"), dict(spec, name="b"), urls_only=True)
    first, second = (made.fleet.nodes[name] for name in node_names(made))
    for model in ("llama3.2", "qwen2.5:7b", "mistral"):
        headers = {"X-Sollol-Node": first.name}
        body = orjson.dumps({"model": model, "prompt": "x", "options": {"num_predict": 2}})
        async with http.post(made.url + "/api/generate", data=body, headers=headers) as r:
            assert r.status == 200
            await r.read()
        await eventually(lambda m=model: any(k.startswith(m) for k in first.loaded))
    await eventually(lambda: capacity.max_loaded(first) == 2)
    assert capacity.max_loaded(second) == 2 and second.beliefs.memory.max_loaded is None


async def probe_into_a_full_node(
    made: Cluster, http: aiohttp.ClientSession, priority: int = 5, tokens: int = 150
) -> tuple[int, list[bytes], str, int, float]:
    """A node of one slot, learned; a probe made due; a long request holding the slot, and a
    second one sent beside it (the probe). Returns the probe's status, lines and route, and how
    many requests the node saw cancelled and how long they waited on its semaphore meanwhile."""
    (name,) = node_names(made)
    await load(http, made, clients=3, each=4, tokens=30)  # learns the one slot, its speeds
    assert believed(made) == {name: 1}
    belief = capacity.slot_belief(made.fleet.nodes[name], MODEL)
    assert belief is not None
    belief.estimator.finished(1, None, asyncio.get_running_loop().time())  # a failure: probe due
    node = made.nodes[0]
    cancelled, waited = node.cancelled, node.stats.queue_wait
    options = {"num_predict": tokens}
    long = orjson.dumps({"model": "llama3.2", "prompt": "hi", "options": options})
    async with http.post(made.url + "/api/generate", data=long) as first:
        await first.content.readline()  # it holds the node's one slot (1.5 s by default)
        async with http.post(
            made.url + "/api/generate", data=long, headers={"X-Sollol-Priority": str(priority)}
        ) as probe:
            lines = (await probe.read()).splitlines()
            route = probe.headers.get("X-Sollol-Route", "")
        await first.read()
    return probe.status, lines, route, node.cancelled - cancelled, node.stats.queue_wait - waited


ONE_SLOT = dict(
    name="a", models=["llama3.2"], num_parallel=1, token_delay=TOKEN_DELAY, deterministic=False
)


async def test_a_probe_that_finds_no_free_slot_waits_in_the_proxy_not_in_ollama(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(ONE_SLOT, urls_only=True)
    status, lines, route, cancelled, waited = await probe_into_a_full_node(made, http)
    assert status == 200
    assert orjson.loads(lines[-1])["done"] is True and len(lines) == 151
    (name,) = node_names(made)
    assert f"a probe on {name} had none within" in route
    assert cancelled == 1  # the probe's request left Ollama's semaphore
    assert waited < 0.5  # where it would have waited about 1.5 s
    assert believed(made) == {name: 1}


async def test_a_probe_near_the_end_of_its_maximum_wait_is_served_inside_ollama(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # Sent back to the queue, it could wait no longer than its last 0.8 s, less than the
    # slot's holder has left: a 503, where waiting on the node's semaphore serves it.
    band = {"priorities": "1-3", "max_wait": "800ms"}
    made = await cluster(ONE_SLOT, urls_only=True, queue__bands=[band])
    status, lines, route, cancelled, waited = await probe_into_a_full_node(made, http, 2)
    assert status == 200 and len(lines) == 151
    assert "a probe on" not in route and cancelled == 0
    assert waited > 0.5


async def test_without_a_queue_a_probe_that_finds_no_free_slot_waits_inside_ollama(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # With `queue.enabled: false` every node is free to the admission: a probe sent back would
    # only be sent again (a bench of it cut every request beyond the belief, twice the work).
    made = await cluster(ONE_SLOT, urls_only=True, queue__enabled=False)
    # The slot is held long enough for a patience learned from first bytes that waited.
    status, lines, route, cancelled, waited = await probe_into_a_full_node(made, http, tokens=400)
    assert status == 200 and len(lines) == 401
    assert "a probe on" not in route and cancelled == 0
    assert waited > 0.5
