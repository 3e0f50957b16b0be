"""A pooled node connection's protocol: the answer's head (parsed by nodehead.py) and its body's
framing read here, the body's bytes handed on as each read of the node's socket brings them.

aiohttp's `ResponseHandler` feeds every read to its parser, which feeds a `StreamReader`, which
wakes the relaying task, which writes the bytes to the client: per streamed chunk, a future and
a task switch on top of the two socket calls, most of what the proxy spent per chunk beyond
nginx. Here the body (nodebody.py) is either read (`NodeBody.readany`, for the first bytes, a
collected answer, a small answer) or pushed: `NodeBody.push` calls the relay's sink from
`data_received` itself, so a chunk goes from the node's socket to the client's in one callback
(push.py).

Only framing is read: the body's bytes are never parsed, merged across reads or re-serialized.
The errors are those aiohttp raises for the same faults (reference 1.4: a node that closes
before its head, a body cut off), so that the reasons the proxy reports do not change.
"""

from __future__ import annotations

import asyncio

import aiohttp
from multidict import CIMultiDictProxy

from sollol_proxy.forward.nodebody import NodeBody, Sink
from sollol_proxy.forward.nodehead import (
    CHUNKED,
    DONE,
    HEAD,
    LENGTH,
    UNTIL_CLOSE,
    BadAnswer,
    framing,
    parse_head,
)

# A head (status line and fields) longer than this is refused, as aiohttp's parser refuses
# lines and fields over 8 KiB; a chunk-size line longer than MAX_LINE likewise.
MAX_HEAD = 2**16
MAX_LINE = 2**12
_HEAD_END = b"\r\n\r\n"
_HEX = b"0123456789abcdefABCDEF"
_LOWER_HEX = b"0123456789abcdef"
# The size line of a read taken whole on the fast path (data_received) has at most this many
# hex digits (chunks under 4 GiB); a longer one is read by the general path and its bounds.
_SIZE_DIGITS = 8


class NodeProtocol(asyncio.Protocol):
    """One keep-alive connection to a node: one request at a time (pool.py writes it)."""

    __slots__ = (
        "_body",
        "_buffer",
        "_crlf",
        "_drain",
        "_head",
        "_left",
        "_mode",
        "_reading",
        "_trailers",
        "_write_paused",
        "loop",
        "should_close",
        "sink",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.should_close = False
        self._buffer = b""  # a head, or a chunk-size line, not yet whole
        self._head: asyncio.Future[tuple[int, str, CIMultiDictProxy[str], NodeBody]] | None = None
        self._body: NodeBody | None = None
        self._mode = DONE
        self._left = 0  # bytes of the sized body, or of the current chunk, still to come
        self._crlf = False  # a chunk's data ended: its CRLF comes next
        self._trailers = False  # the last chunk came: trailer lines until a blank one
        self._reading = True
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        # Where the body's reads go while it is pushed (NodeBody.push sets it, unpush clears it).
        self.sink: Sink | None = None

    # what pool.py uses

    def is_connected(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.should_close = True

    def expect(self) -> asyncio.Future[tuple[int, str, CIMultiDictProxy[str], NodeBody]]:
        """The next answer's head (status, reason, fields) and body, once its head has come."""
        self._head = self.loop.create_future()
        self._mode, self._buffer = HEAD, b""
        self._crlf = self._trailers = False
        self.sink = None
        self.resume()  # the last answer may have ended held for a slow client
        return self._head

    async def drain(self) -> None:
        if self._write_paused and self.transport is not None:
            self._drain = self.loop.create_future()
            await self._drain

    def hold(self) -> None:
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def resume(self) -> None:
        if not self._reading and self.transport is not None:
            self._reading = True
            self.transport.resume_reading()

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.should_close = True
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("connection to the node closed"))
        if self._mode == HEAD and self._head is not None and not self._head.done():
            # As aiohttp words it: a clean close is "disconnected", a reset the OS error.
            lost = aiohttp.ClientOSError(*exc.args) if isinstance(exc, OSError) else None
            self._head.set_exception(lost or aiohttp.ServerDisconnectedError())
        elif self._mode == UNTIL_CLOSE and exc is None:
            self._done()
        elif self._mode != DONE and self._body is not None:
            self._body.set_exception(
                aiohttp.ClientPayloadError("Response payload is not completed")
            )
        self._mode = DONE

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if (
            sink is not None
            and self._mode == CHUNKED
            and not (self._buffer or self._left or self._crlf or self._trailers)
        ):
            # The common read of a pushed stream: exactly one whole chunk (a token as the node
            # flushed it), its size in lowercase hex without leading zeros, as Ollama (Go)
            # and aiohttp write it. Handed to the sink from here with the read itself, which a
            # chunked answer passes on as it came: a stream's chunk costs this call and the
            # sink's, not a pass through the framing's methods and the body's, nor a new frame.
            # Any other read (the last chunk, a split or merged one) takes the general path.
            eol = data.find(b"\r\n")
            digits = data[:eol]
            if (
                0 < eol <= _SIZE_DIGITS
                and digits[0] != 48  # b"0": a leading zero, or the last chunk
                and not digits.strip(_LOWER_HEX)
                and data[-2:] == b"\r\n"
                and eol + int(digits, 16) + 4 == len(data)
            ):
                if sink(data[eol + 2 : -2], data) and self._body is not None:
                    self._body.full()
                return
        try:
            if self._mode == HEAD:
                data = self._read_head(data)
                if not data:
                    return
            mode = self._mode
            if mode == CHUNKED:
                self._read_chunked(data)
            elif mode == LENGTH:
                left = self._left
                if len(data) > left:  # more than the node announced: not reused
                    self.should_close = True
                    data = data[:left]
                self._left = left - len(data)
                self._feed(data)
                if not self._left:
                    self._done()
            elif mode == UNTIL_CLOSE:
                self._feed(data)
            else:  # bytes with no request waiting for them: the connection is not reused
                self.close()
        except BadAnswer as exc:
            self._fail(exc)

    # framing

    def _read_head(self, data: bytes) -> bytes:
        """Bytes after the head, once it is whole; b"" while it is not."""
        kept = len(self._buffer)
        buffer = self._buffer + data if kept else data
        # A head sent a few bytes per read is searched only where its end can be (the new bytes
        # and the three before them), not from its start on every read.
        start, search = 0, max(0, kept - 3)
        while True:  # interim answers (1xx) are skipped: the real one follows
            end = buffer.find(_HEAD_END, search)
            if end < 0:
                self._buffer = buffer[start:] if start else buffer
                if len(self._buffer) > MAX_HEAD:
                    raise BadAnswer("400, message='Header section is too large'")
                return b""
            if end - start > MAX_HEAD:  # however it arrived: whole in one read too
                raise BadAnswer("400, message='Header section is too large'")
            status, reason, headers, http10 = parse_head(buffer[start:end])
            start = search = end + 4
            if not 100 <= status < 200:
                break
        self._buffer = b""
        rest = buffer[start:]
        self._mode, self._left, close = framing(status, headers)
        if close:
            self.should_close = True
        if http10 and "keep-alive" not in headers.get("Connection", "").lower():
            self.should_close = True
        body = self._body = NodeBody(self)
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result((status, reason, CIMultiDictProxy(headers), body))
        if self._mode == DONE:
            body.finish()
            if rest:
                self.should_close = True
            return b""
        return rest

    def _read_chunked(self, data: bytes) -> None:
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        elif not (self._left or self._crlf or self._trailers):
            # The common read of a stream: exactly one whole chunk (a token as the node
            # flushed it), taken in one step.
            eol = data.find(b"\r\n", 0, MAX_LINE)
            digits = data[:eol]
            if eol > 0 and not digits.strip(_HEX) and data[-2:] == b"\r\n":
                size = int(digits, 16)
                if size and eol + size + 4 == len(data):
                    self._feed(data[eol + 2 : -2])
                    return
        pieces: list[bytes] = []
        pos, size = 0, len(data)
        while pos < size:
            left = self._left
            if left:
                end = pos + left
                if end >= size:
                    pieces.append(data[pos:] if pos else data)
                    self._left, self._crlf = end - size, end == size
                    break
                pieces.append(data[pos:end])
                self._left, self._crlf, pos = 0, True, end
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                if size - pos > MAX_LINE:
                    raise BadAnswer("400, message='Chunk size line is too long'")
                self._buffer = data[pos:]
                break
            line, pos = data[pos:eol], eol + 2
            if self._crlf:
                if line:
                    raise BadAnswer("400, message='Chunk not followed by CRLF'")
                self._crlf = False
            elif self._trailers:
                if not line:  # the end of the body
                    if pos < size:
                        self.should_close = True
                    self._feed_all(pieces)
                    self._done()
                    return
            else:
                digits = line.split(b";", 1)[0].strip()
                if not digits or digits.strip(_HEX):
                    raise BadAnswer("400, message='Invalid chunk size'")
                self._left = int(digits, 16)
                self._trailers = not self._left
        self._feed_all(pieces)

    def _feed_all(self, pieces: list[bytes]) -> None:
        if pieces:
            self._feed(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _feed(self, data: bytes) -> None:
        if data and self._body is not None:
            self._body.feed(data)

    def _done(self) -> None:
        self._mode = DONE
        if self._body is not None:
            self._body.finish()

    def _fail(self, exc: BaseException) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        elif self._body is not None:
            self._body.set_exception(exc)
        self._mode = DONE
        self.close()
