"""nginx as the baseline a proxy is measured against: one process, least_conn over the nodes,
no buffering (so streams pass chunk by chunk), keep-alive to the nodes. Used when Debian's
`nginx` is installed; the benchmarks say so when it is not."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

CONFIG = """\
worker_processes 1;
master_process off;
daemon off;
error_log stderr error;
pid {dir}/nginx.pid;
events {{ worker_connections 65536; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream ollama {{
        least_conn;
{servers}
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Ollama refuses a Host it does not know (reference 1.5): every node here is local.
            proxy_set_header Host localhost;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_next_upstream off;  # a request is sent once, as a client would
            client_max_body_size 64m;
        }}
    }}
}}
"""


def available() -> bool:
    return binary() is not None


def binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


@asynccontextmanager
async def nginx(nodes: Sequence[str], port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """nginx on 127.0.0.1:`port` in front of `nodes` (URLs); yields its one process."""
    executable = binary()
    if executable is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
    servers = "\n".join(f"        server {urlsplit(url).netloc};" for url in nodes)
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "nginx.conf"
        config.write_text(CONFIG.format(dir=directory, servers=servers, port=port))
        process = await asyncio.create_subprocess_exec(
            executable, "-c", str(config), "-p", directory, stderr=asyncio.subprocess.PIPE
        )
        try:
            await _wait_listening(port, process)
            yield process
        finally:
            if process.returncode is None:
                process.terminate()
            await asyncio.wait_for(process.wait(), 10)


async def _wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    for _ in range(200):
        if process.returncode is not None:
            assert process.stderr is not None
            raise RuntimeError(f"nginx exited: {(await process.stderr.read()).decode()[:500]}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError("nginx did not start listening")


@asynccontextmanager
async def least_conn(nodes: Sequence[str]) -> AsyncIterator[str]:
    """nginx balancing `nodes` with least_conn on a free port; yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with nginx(nodes, port):
        yield f"http://127.0.0.1:{port}"
