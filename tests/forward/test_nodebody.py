"""An answer's body on a pooled node connection (forward/nodebody.py): pushed one piece per
socket read, or read with the node's socket paused while too much waits unread."""

from __future__ import annotations

import asyncio

from sollol_proxy.forward.nodebody import READ_AHEAD
from sollol_proxy.forward.pool import NodePool
from tests.conftest import eventually
from tests.forward.test_nodewire import HEAD, ScriptedNode, scripted, start

__all__ = ["scripted"]  # the fixture, used by name


async def test_a_pushed_body_reaches_the_sink_one_piece_per_read(
    scripted: list[ScriptedNode],
) -> None:
    pieces = [HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"3\r\nabc\r\n", b"2\r\nde\r\n"]
    pieces += [b"1\r\nf\r\n1\r\ng\r\n", b"B\r\nhello world\r\n", b"02\r\nhi\r\n"]
    pieces += [b"1;x=y\r\n!\r\n", b"a\r\n0123456789\r\n", b"0\r\n\r\n"]
    node = await start(scripted, pieces)
    pool = NodePool(1.0, 15.0)
    response = await pool.request("POST", node.url, "/api/chat", {}, b"{}")
    seen: list[tuple[bytes, bytes | None]] = []

    def sink(data: bytes, framed: bytes | None) -> bool:
        seen.append((data, framed))
        return False

    response.content.push(sink)
    assert await response.content.pushed()
    # Each socket read is one piece; the two chunks of one read are one piece, not merged
    # with another read's and not split. A read that is one chunk framed as aiohttp frames one
    # (lowercase hex size, no leading zero, no extension) comes with the read itself, to be
    # passed on as it came; any other is framed again by the sink.
    assert seen == [
        (b"abc", b"3\r\nabc\r\n"),
        (b"de", b"2\r\nde\r\n"),
        (b"fg", None),
        (b"hello world", None),
        (b"hi", None),
        (b"!", None),
        (b"0123456789", b"a\r\n0123456789\r\n"),
    ]
    for data, framed in seen:
        assert framed is None or framed == b"%x\r\n%b\r\n" % (len(data), data)
    response.release()
    pool.close()


async def test_an_unread_body_pauses_the_node_socket_and_reads_on_whole(
    scripted: list[ScriptedNode],
) -> None:
    body = b"x" * (4 * READ_AHEAD)
    sized = HEAD + b"Content-Length: %d\r\n\r\n" % len(body)
    node = await start(
        scripted, [sized] + [body[i : i + 65536] for i in range(0, len(body), 65536)]
    )
    pool = NodePool(1.0, 15.0)
    response = await pool.request("POST", node.url, "/api/chat", {}, b"{}")
    protocol = response._connection.protocol  # type: ignore[union-attr]
    # Nobody reads: the protocol stops reading the node.
    await eventually(lambda: not protocol.transport.is_reading())
    received = b""
    while chunk := await response.content.readany():
        received += chunk
    assert received == body
    response.release()
    assert sum(len(idle) for idle in pool._idle.values()) == 1
    pool.close()


async def test_a_connection_held_for_a_slow_client_at_its_last_bytes_is_pooled_reading(
    scripted: list[ScriptedNode],
) -> None:
    # The last piece fills the client's buffer (the sink says so) in the read that also ends
    # the body: the connection goes back to the pool, and must be read again for the next.
    answer = [HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n"]
    node = await start(scripted, answer, answer)
    pool = NodePool(1.0, 15.0)
    response = await pool.request("POST", node.url, "/api/chat", {}, b"{}")
    response.content.push(lambda data, framed: True)
    assert await response.content.pushed()
    response.release()
    async with asyncio.timeout(5):
        response = await pool.request("POST", node.url, "/api/chat", {}, b"{}")
        assert await response.content.readany() == b"abc"
    assert node.connections == 1
    pool.close()
