"""server.py's process: once serving, what start-up made is out of the garbage collector's walks;
a port taken while it starts is one line, not a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from sollol_proxy.config import load_config
from sollol_proxy.lifecycle.startup import StartupError
from sollol_proxy.server import start_proxy
from sollol_proxy.simulator import SimulatedNode
from tests.conftest import free_port

SCRIPT = """
import asyncio, gc, os, signal, sys
from sollol_proxy.config import load_config
from sollol_proxy.server import serve_forever

async def main() -> None:
    overrides = {"listen.host": "127.0.0.1", "listen.port": int(sys.argv[1]), "nodes": [sys.argv[2]]}
    serving = asyncio.ensure_future(serve_forever(load_config(None, env={}, overrides=overrides)))
    for _ in range(400):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", int(sys.argv[1]))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        break
    print(gc.get_freeze_count(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    await serving

asyncio.run(main())
"""


async def test_objects_made_at_start_up_are_frozen_once_the_proxy_serves() -> None:
    node = SimulatedNode(name="a", models=["llama3.2:latest"], deterministic=True)
    await node.start(port=0)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SCRIPT,
            str(free_port()),
            node.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await node.stop()
    assert process.returncode == 0
    assert int(stdout.decode().split()[0]) > 10_000  # modules, the app and its parts


@contextlib.asynccontextmanager
async def _node_that_takes(port: int) -> AsyncIterator[str]:
    """A node that, when the proxy's start-up probe reaches it, binds and listens on `port`
    with SO_REUSEADDR, as a second proxy started at the same time would. The proxy has bound
    its port by then, but listens on it only once its app is ready."""
    taken: list[socket.socket] = []

    async def probe(request: web.Request) -> web.Response:
        if not taken:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
            taken.append(sock)
        return web.json_response({"version": "0.6.0", "models": []})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", probe)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        for sock in taken:
            sock.close()
    assert taken, "the proxy never probed the node"


IN_USE = "address already in use (is Ollama or another sollol-proxy running there?)"


async def test_a_port_taken_while_the_proxy_starts_is_a_startup_error() -> None:
    port = free_port()
    async with _node_that_takes(port) as node:
        config = load_config(
            None,
            env={},
            overrides={"listen.host": "127.0.0.1", "listen.port": port, "nodes": [node]},
        )
        with pytest.raises(StartupError) as error:
            await start_proxy(config)
    assert str(error.value).startswith(f"cannot listen on 127.0.0.1:{port}: {IN_USE}")


async def test_a_port_taken_while_the_proxy_starts_on_uvloop_is_one_line() -> None:
    """On uvloop (the CLI's loop) the failed listen() was swallowed: the proxy said it was
    listening while nothing accepted there, or died with a traceback."""
    port = free_port()
    async with _node_that_takes(port) as node:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "sollol_proxy", "--host", "127.0.0.1", "--port", str(port), "--node", node),
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ},
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    said = f"sollol-proxy: cannot listen on 127.0.0.1:{port}: {IN_USE}; choose another with --port"
    assert process.returncode == 2, stderr.decode()
    assert said in stderr.decode().splitlines() and b"Traceback" not in stderr
