"""The client session to the nodes: what aiohttp must not do on its own to a pass-through."""

from __future__ import annotations

import aiohttp

from sollol_proxy.config import Config
from sollol_proxy.lifecycle.sockets import keepalive_socket_factory


def upstream_session(config: Config) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        # Streams are long-lived; a pool limit would queue requests inside the proxy, unseen.
        connector=aiohttp.TCPConnector(
            limit=0,
            enable_cleanup_closed=True,
            socket_factory=keepalive_socket_factory(config.client_limits.tcp_keepalive),
        ),
        # Timeouts are applied per phase by the proxy (first byte, idle read), not per request.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.timeouts.connect),
        auto_decompress=False,  # bytes pass through exactly as the node sent them
        # Only the client's own headers go to the node: aiohttp would add these by itself.
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )
