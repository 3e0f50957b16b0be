"""`sollol-proxy demo` and `sollol-proxy simulate`: try the proxy with no Ollama installed."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from sollol_proxy.config import load_config
from sollol_proxy.lifecycle.startup import cannot_listen
from sollol_proxy.server import start_proxy
from sollol_proxy.simulator import SimulatedNode

# Spread the catalog so that the demo shows routing by model: some models on every node, some on one.
DEMO_LAYOUT = [
    ["llama3.2:latest", "all-minilm:latest", "qwen2.5:7b"],
    ["llama3.2:latest", "all-minilm:latest", "mistral:latest"],
    ["llama3.2:latest", "nomic-embed-text:latest"],
]


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _demo(count: int, host: str, port: int, token_delay: float, load_delay: float) -> None:
    nodes = [
        SimulatedNode(
            name=f"sim-{i + 1}",
            models=DEMO_LAYOUT[i % len(DEMO_LAYOUT)],
            num_parallel=2,
            token_delay=token_delay,
            load_delay=load_delay,
        )
        for i in range(count)
    ]
    try:
        for node in nodes:
            await node.start(port=0)
        config = load_config(
            None,
            env={},
            overrides={
                "listen.host": host,
                "listen.port": port,
                # Names for readable headers; slots and memory are learned, as in real use.
                "nodes": [{"url": n.url, "name": n.name} for n in nodes],
            },
        )
        proxy = await start_proxy(config)
        try:
            print(f"\nsollol-proxy demo: {count} simulated Ollama nodes behind {proxy.url}")
            for node in nodes:
                print(f"  {node.name}: {node.url}  models: {', '.join(node.model_names())}")
            print(
                f"\nTry:\n  curl {proxy.url}/api/tags\n"
                f"  curl -i {proxy.url}/api/chat -d "
                '\'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}\'\n'
                f"  OLLAMA_HOST={proxy.url} ollama run llama3.2   (if you have the ollama CLI)\n"
                "Ctrl-C stops everything.\n",
                flush=True,
            )
            await _wait_for_signal()
        finally:
            await proxy.stop()
    finally:  # also when the proxy could not start: nothing is left running
        for node in nodes:
            await node.stop()


def run_demo(count: int, host: str, port: int, token_delay: float, load_delay: float) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_demo(count, host, port, token_delay, load_delay))


async def _simulate(host: str, port: int, node: SimulatedNode) -> None:
    try:
        url = await node.start(port=port, host=host)
    except OSError as exc:
        await node.stop()
        raise cannot_listen(host, port, exc, "choose another with --port") from None
    print(
        f"simulated Ollama node {node.name} on {url}: {', '.join(node.model_names())}", flush=True
    )
    try:
        await _wait_for_signal()
    finally:
        await node.stop()


def run_simulated_node(
    host: str,
    port: int,
    models: list[str] | None,
    num_parallel: int,
    token_delay: float,
    load_delay: float,
) -> None:
    node = SimulatedNode(
        name=f"sim-{port}",
        models=models or ["llama3.2:latest", "all-minilm:latest"],
        num_parallel=num_parallel,
        token_delay=token_delay,
        load_delay=load_delay,
        bind_host=host,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_simulate(host, port, node))
