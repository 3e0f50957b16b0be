"""The node protocol (forward/nodewire.py) against a scripted node on a real socket: every
framing a node may use, split anywhere, gives the body's bytes exactly; broken answers raise
the errors aiohttp raises for them; a connection is pooled again only when its answer ended
cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest

from sollol_proxy.fleet.fleet import describe_error
from sollol_proxy.forward.nodehead import BadAnswer
from sollol_proxy.forward.pool import NodePool, PooledResponse

BODY = b'{"model":"m","response":"a"}\n{"model":"m","done":true}\n'


class ScriptedNode:
    """Answers each request on a connection with the next of `answers`, written in the given
    pieces (each its own socket write, a pause between them); an empty piece closes the
    connection there."""

    def __init__(self, answers: Sequence[Sequence[bytes]]) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = [
                    int(line.split(b":")[1]) for line in head.split(b"\r\n") if b"Length" in line
                ]
                await reader.readexactly(length[0] if length else 0)
                for piece in self.answers.pop(0):
                    if not piece:
                        writer.close()
                        return
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.001)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def scripted() -> AsyncIterator[list[ScriptedNode]]:
    made: list[ScriptedNode] = []
    yield made
    for node in made:
        assert node.server is not None
        node.server.close()


async def start(made: list[ScriptedNode], *answers: Sequence[bytes]) -> ScriptedNode:
    node = ScriptedNode(answers)
    node.server = await asyncio.start_server(node.handle, "127.0.0.1", 0)
    made.append(node)
    return node


async def read_all(response: PooledResponse) -> bytes:
    chunks = []
    while chunk := await response.content.readany():
        chunks.append(chunk)
    response.release()
    return b"".join(chunks)


def chunked(body: bytes, size: int) -> bytes:
    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    )
    return framed + b"0\r\n\r\n"


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize("split", ["whole", "bytewise"])
async def test_a_chunked_answer_split_anywhere_gives_the_body_and_the_connection_is_reused(
    scripted: list[ScriptedNode], split: str
) -> None:
    answer = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(BODY, 7)
    pieces = bytewise(answer) if split == "bytewise" else [answer]
    node = await start(scripted, pieces, pieces)
    pool = NodePool(1.0, 15.0)
    for _ in range(2):
        response = await pool.request("POST", node.url, "/api/generate", {"Host": "n"}, b"{}")
        assert response.status == 200 and response.reason == "OK"
        assert response.headers["Content-Type"] == "application/x-ndjson"
        assert await read_all(response) == BODY
    assert node.connections == 1  # the second request went on the pooled connection
    pool.close()


async def test_chunk_extensions_and_trailers_are_framing_only(
    scripted: list[ScriptedNode],
) -> None:
    framed = b"5;name=value\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n"
    answer = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + framed
    node = await start(scripted, [answer], [answer])
    pool = NodePool(1.0, 15.0)
    response = await pool.request("POST", node.url, "/api/chat", {}, b"{}")
    assert await read_all(response) == b"hello!"
    response = await pool.request("POST", node.url, "/api/chat", {}, b"{}")
    assert await read_all(response) == b"hello!"
    assert node.connections == 1
    pool.close()


async def test_sized_interim_empty_and_until_close_answers(scripted: list[ScriptedNode]) -> None:
    sized = HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    empty = b"HTTP/1.1 204 No Content\r\n\r\n"
    node = await start(
        scripted, bytewise(sized), [interim, sized], [empty], [HEAD + b"\r\n", BODY, b""]
    )
    pool = NodePool(1.0, 15.0)
    for status, body in ((200, BODY), (200, BODY), (204, b""), (200, BODY)):
        response = await pool.request("POST", node.url, "/api/chat", {}, b"{}")
        assert response.status == status
        assert await read_all(response) == body
    assert node.connections == 1  # the last answer, read until the close, ends it
    assert not any(pool._idle.values())
    pool.close()


async def test_interim_answers_in_any_number_before_the_head(
    scripted: list[ScriptedNode],
) -> None:
    # Thousands in one read: each is skipped in turn, not by a call deeper each (a
    # RecursionError in data_received, which the loop logs and answers by closing).
    sized = HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
    node = await start(scripted, [b"HTTP/1.1 100 Continue\r\n\r\n" * 5000 + sized])
    pool = NodePool(1.0, 15.0)
    response = await pool.request("POST", node.url, "/api/chat", {}, b"{}")
    assert response.status == 200
    assert await read_all(response) == BODY
    pool.close()


async def test_a_node_that_sends_more_than_its_length_is_not_reused(
    scripted: list[ScriptedNode],
) -> None:
    sized = HEAD + b"Content-Length: 5\r\n\r\nhello, and more"
    node = await start(scripted, [sized], [sized])
    pool = NodePool(1.0, 15.0)
    for _ in range(2):
        response = await pool.request("POST", node.url, "/api/chat", {}, b"{}")
        assert await read_all(response) == b"hello"
    assert node.connections == 2
    pool.close()


async def test_a_node_that_closes_before_its_head_is_disconnected(
    scripted: list[ScriptedNode],
) -> None:
    node = await start(scripted, [HEAD, b""])  # half a head, then the connection closes
    pool = NodePool(1.0, 15.0)
    with pytest.raises(aiohttp.ServerDisconnectedError) as caught:
        await pool.request("POST", node.url, "/api/chat", {}, b"{}")
    assert describe_error(caught.value) == "connection closed by node"


@pytest.mark.parametrize(
    "answer",
    [
        HEAD + b"Content-Length: 100\r\n\r\nhello",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
    ids=["sized", "mid-chunk", "no-last-chunk"],
)
async def test_a_body_cut_off_raises_after_the_bytes_that_came(
    scripted: list[ScriptedNode], answer: bytes
) -> None:
    node = await start(scripted, [answer, b""])
    pool = NodePool(1.0, 15.0)
    response = await pool.request("POST", node.url, "/api/chat", {}, b"{}")
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError) as caught:
        while chunk := await response.content.readany():
            received += chunk
    assert received in (b"hel", b"hello")
    assert describe_error(caught.value) == "response body cut off by node"
    response.close()


async def test_a_malformed_chunk_breaks_the_body(scripted: list[ScriptedNode]) -> None:
    answer = HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"
    node = await start(scripted, [answer])
    pool = NodePool(1.0, 15.0)
    response = await pool.request("POST", node.url, "/api/chat", {}, b"{}")
    with pytest.raises(BadAnswer):
        while await response.content.readany():
            pass
    response.close()
