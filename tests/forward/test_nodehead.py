"""A node's answer head (forward/nodehead.py), sent by a scripted node on a real socket: a
malformed status line, field or framing is the client error aiohttp raises for it."""

from __future__ import annotations

import pytest

from sollol_proxy.forward.nodehead import BadAnswer
from sollol_proxy.forward.pool import NodePool
from tests.forward.test_nodewire import HEAD, ScriptedNode, scripted, start

__all__ = ["scripted"]  # the fixture, used by name


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"SPDY/3 200 OK\r\n\r\n",
        HEAD + b" X-Folded: value\r\n\r\n",
        HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        HEAD + b"Transfer-Encoding: gzip\r\n\r\n",
        # Both framings: which one the node meant is unknown, and the relay would copy the
        # length onto bytes framed by the chunks (aiohttp refuses it too).
        HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        # A lone CR or LF, or a NUL, in the status line or a field: aiohttp's server refuses to
        # write them back, after the head was taken as good (a 500 instead of a failover).
        b"HTTP/1.1 200 OK\rX\r\nContent-Length: 0\r\n\r\n",
        HEAD + b"X-Bad: a\rb\r\nContent-Length: 0\r\n\r\n",
        HEAD + b"X-Bad: a\nb\r\nContent-Length: 0\r\n\r\n",
        HEAD + b"X-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n",
        # A length that is no number, on an answer without a body: the relay reads it still.
        "HTTP/1.1 204 No Content\r\nContent-Length: \u00b2\r\n\r\n".encode(),
        # A head over the bound, arriving whole in one read (it is refused piece by piece too).
        HEAD + b"X-Long: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_a_malformed_head_is_a_client_error(
    scripted: list[ScriptedNode], answer: bytes
) -> None:
    node = await start(scripted, [answer])
    pool = NodePool(1.0, 15.0)
    with pytest.raises(BadAnswer):
        await pool.request("POST", node.url, "/api/chat", {}, b"{}")
