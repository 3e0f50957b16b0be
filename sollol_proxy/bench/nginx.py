"""nginx with `least_conn` in front of the simulated nodes: the baseline a user would otherwise
deploy. It runs as its own process from a config written to a temporary directory; when nginx is
not installed, the proxy's own `least_loaded` strategy with the queue off stands in."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

CONFIG = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    upstream ollama {{
        least_conn;
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host localhost;  # Ollama refuses other names on a loopback bind
            proxy_buffering off;
            proxy_read_timeout 600s;
            proxy_next_upstream off;  # a request is sent once, as a client would
        }}
    }}
}}
"""


def available() -> bool:
    return shutil.which("nginx") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def least_conn(node_urls: list[str]) -> AsyncIterator[str]:
    """nginx balancing `node_urls` with least_conn; yields its URL."""
    binary = shutil.which("nginx")
    assert binary is not None, "nginx is not installed"
    with tempfile.TemporaryDirectory(prefix="sollol-nginx-") as directory:
        port = _free_port()
        servers = "\n".join(f"        server {url.split('://', 1)[1]};" for url in node_urls)
        conf = Path(directory) / "nginx.conf"
        conf.write_text(CONFIG.format(dir=directory, servers=servers, port=port))
        process = await asyncio.create_subprocess_exec(
            binary,
            "-p",
            directory,
            "-c",
            str(conf),
            "-e",
            f"{directory}/error.log",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await _until_listening(port, process)
            yield f"http://127.0.0.1:{port}"
        finally:
            if process.returncode is None:
                process.terminate()
                await process.wait()


async def _until_listening(port: int, process: asyncio.subprocess.Process) -> None:
    for _ in range(100):
        if process.returncode is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError("nginx did not start listening")
