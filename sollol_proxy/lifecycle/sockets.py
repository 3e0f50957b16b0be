"""Socket options shared by both sides of the proxy: TCP keep-alive on client connections and on
connections to nodes, and the client address a connection is counted under."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

# Go's net.ListenConfig and net.Dialer defaults (15 s idle, 15 s between probes, 9 probes).
KEEPALIVE_PROBES = 9


def set_keepalive(sock: Any, idle: float) -> None:
    """TCP keep-alive probes after `idle` seconds of silence, so that a peer that vanished
    (power loss, a NAT that forgot the flow) is noticed while a stream waits for its tokens."""
    seconds = max(1, round(idle))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", seconds),
        ("TCP_KEEPINTVL", seconds),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        if hasattr(socket, option):  # Linux; other platforms keep their system defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def keepalive_socket_factory(idle: float) -> Callable[[Any], socket.socket]:
    """For aiohttp's TCPConnector: every connection to a node gets TCP keep-alive."""

    def new_socket(addr_info: Any) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family, kind, proto)
        set_keepalive(sock, idle)
        return sock

    return new_socket


def peer_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "-"
