"""server.py's process: once serving, what start-up made is out of the garbage collector's walks."""

from __future__ import annotations

import asyncio
import sys

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
