"""Read a request body once and look at only what routing needs. The bytes are forwarded as read.

What the proxy reads is bounded, because a client chooses the body: a body is read no faster
than `min_rate` and with no silence longer than `stall`; a compressed body is inflated for the
look only, never beyond the body limit; a small body is parsed with orjson on the event loop; a
larger one (or one orjson refuses: invalid UTF-8, nesting deeper than orjson's 1024, trailing
bytes) is walked by `jsonscan` in a worker thread, which finds the top-level members without
building them, and only the cheapest members are then built, within a budget. What is not
built still goes to the node; the analysis just does not see it.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import StreamReader, web

from sollol_proxy.wire.body_budget import BodyHold
from sollol_proxy.wire.jsonscan import GO_REPLACE, TooComplex, TooDeep, go_field_match, members
from sollol_proxy.wire.routes import Route

# Parsed whole on the event loop with orjson: at most a couple of milliseconds, even for a body
# made of tiny values. Larger bodies are read in a worker thread.
INLINE_BYTES = 64 * 1024
# Strings, arrays and objects the scan walks through before the proxy gives up on a body.
MAX_SCAN_TOKENS = 500_000
# Values built as Python objects for the analysis, all members together (about 100 bytes each).
MAX_BUILT_VALUES = 200_000
# A member this large is not built: orjson would hold the GIL (the event loop) for too long.
MAX_MEMBER_BYTES = 8 * 2**20


class BodyTooLarge(Exception):
    def __init__(self, limit: int, *, inflated: bool = False) -> None:
        what = "inflates to more than" if inflated else "is larger than"
        super().__init__(f"request body {what} the proxy's limit of {limit} bytes")
        self.limit = limit


class BodyTooComplex(Exception):
    def __init__(self) -> None:
        super().__init__(
            f"request body has more than {MAX_SCAN_TOKENS} JSON strings, arrays and objects;"
            " sollol-proxy reads at most that many to route a request"
        )


class BodyTimeout(Exception):
    """The client sends its body too slowly (408)."""


@dataclass(frozen=True, slots=True)
class Peek:
    body: bytes
    # The first JSON value of the body when it is an object (the members the proxy built);
    # None when the body is empty, not JSON, or not an object. The node then answers with
    # Ollama's own error for it.
    payload: dict[str, Any] | None
    model: str
    stream: bool
    # Read in a worker thread: what is derived from it should be too.
    large: bool = False


class _Pace:
    """How long the next chunk of a body may take: never more than `stall`, and never so long
    that the average since the start (after a first `stall`) drops under `min_rate`."""

    def __init__(self, stall: float | None, min_rate: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self.stall, self.min_rate, self.size = stall, min_rate, 0

    def wait(self) -> float | None:
        if self.stall is None or self.min_rate <= 0:
            return self.stall
        due = self._started + self.stall + self.size / self.min_rate
        return min(self.stall, max(0.0, due - self._loop.time()))

    async def next_chunk(self, stream: StreamReader) -> bytes:
        if stream.is_eof():  # the whole body has arrived (a small body, with its head): no wait
            chunk = await stream.readany()
            self.size += len(chunk)
            return chunk
        try:
            async with asyncio.timeout(self.wait()):
                chunk = await stream.readany()
        except TimeoutError:
            raise BodyTimeout(
                f"request body too slow: {self.size} bytes in"
                f" {self._loop.time() - self._started:.0f}s (limits.body_timeout {self.stall:g}s,"
                f" limits.body_min_rate {self.min_rate:g} bytes/s)"
            ) from None
        self.size += len(chunk)
        return chunk


async def read_body(
    request: web.Request,
    limit: int,
    *,
    stall: float | None = None,
    min_rate: float = 0.0,
    hold: BodyHold | None = None,
) -> bytes:
    """The whole body, at most `limit` bytes, with no silence over `stall` seconds and, after
    the first `stall` seconds, at least `min_rate` bytes per second on average.

    With a `hold`, the body is counted against the body budget before it is read: its declared
    length at once, a chunked body as it arrives (BodyBudgetFull when it does not fit). The
    caller releases the hold when the request ends.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    if hold is not None and declared is not None:
        hold.take(declared)
    counting = hold if declared is None else None
    pace = _Pace(stall, min_rate)
    chunks: list[bytes] = []
    while chunk := await pace.next_chunk(request.content):
        if pace.size > limit:
            raise BodyTooLarge(limit)
        if counting is not None:
            counting.take(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


async def paced(
    stream: StreamReader, *, stall: float | None, min_rate: float
) -> AsyncIterator[bytes]:
    """A streamed body (a blob upload, never held whole) under the same pace as `read_body`;
    BodyTimeout ends it."""
    pace = _Pace(stall, min_rate)
    while chunk := await pace.next_chunk(stream):
        yield chunk


NOT_BUILT = object()  # a member the proxy did not build
# The top-level fields the proxy reads itself (the rest only feed the analysis).
_FIELDS = ("model", "name", "source", "stream")
_FIELD_SET = frozenset(_FIELDS)


def _loads(raw: bytes) -> Any:
    """One JSON value; NOT_BUILT when orjson cannot read it even after Go's U+FFFD
    replacement (nesting deeper than orjson's 1024, an escaped lone surrogate, a syntax error)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return orjson.loads(raw.decode("utf-8", GO_REPLACE))
    except orjson.JSONDecodeError:
        return NOT_BUILT


def read_object(text: bytes) -> tuple[dict[str, Any] | None, list[tuple[str, Any]]]:
    """The body's object as Go's decoder would see it: the members the proxy built (None if
    the body is not an object), and every member in order, duplicates included, for Go's
    field matching (a member not built is paired with `NOT_BUILT`).

    Raises BodyTooComplex past `MAX_SCAN_TOKENS`.
    """
    if len(text) <= INLINE_BYTES:
        value = _loads(text)
        if isinstance(value, dict):
            if not _ambiguous(value):
                return value, list(value.items())
        elif value is not NOT_BUILT:
            return None, []
    try:
        found = members(text, MAX_SCAN_TOKENS)
    except TooComplex:
        raise BodyTooComplex from None
    except TooDeep:
        return None, []  # Ollama answers its own 400 for it: the body goes to a node as it is
    if found is None:
        return None, []
    last = {m.key: m for m in found if m.key}  # the last of duplicate keys wins, as in Go
    wanted = {m for m in last.values() if _names_a_field(m.key)}
    budget = MAX_BUILT_VALUES
    built: dict[Any, Any] = {}
    # The fields the proxy reads first, then the cheapest members while the budget lasts.
    for member in sorted(last.values(), key=lambda m: (m not in wanted, m.cost)):
        if member.end - member.start > MAX_MEMBER_BYTES or (
            member.cost > budget and member not in wanted
        ):
            continue
        value = _loads(text[member.start : member.end])
        if value is not NOT_BUILT:
            built[member] = value
            budget -= member.cost
    payload = {key: built[m] for key, m in last.items() if m in built}
    # Go assigns every member in turn: only the last of equal keys leaves its value.
    pairs = [(m.key, built.get(last.get(m.key, m), NOT_BUILT)) for m in found]
    return payload, pairs


def _field_named(key: str) -> str | None:
    """The field of `_FIELDS` that `key` sets in Go, if any. An ASCII key sets a field (lower
    case ASCII) exactly when its lower case is the field: one lookup per key, not a
    `go_field_match` per field; other keys (Go's non-ASCII folds) are matched rune by rune."""
    if key.isascii():
        folded = key.lower()
        return folded if folded in _FIELD_SET else None
    return next((field for field in _FIELDS if go_field_match(key, field)), None)


def _names_a_field(key: str) -> bool:
    return _field_named(key) is not None


def _ambiguous(value: dict[str, Any]) -> bool:
    """Whether two keys of a parsed object set the same field in Go (`model` and `Model`): the
    dict has lost their order, which decides the value."""
    named = [field for field in map(_field_named, value) if field is not None]
    return len(named) > len(set(named))


def go_fields(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """The values Go's decoder leaves in the struct fields of `_FIELDS`: for each, the last
    member whose key matches it, exactly or case-insensitively; a field no member sets (or
    whose member was not built) is absent."""
    values: dict[str, Any] = {}
    for key, member_value in pairs:
        field = _field_named(key)
        if field is not None:
            values[field] = member_value
    return {field: value for field, value in values.items() if value is not NOT_BUILT}


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


def multipart_field(body: bytes, content_type: str, name: str) -> str:
    """A small text field of a multipart/form-data body (the model of /v1/audio/transcriptions)."""
    match = _BOUNDARY.search(content_type)
    if not match:
        return ""
    delimiter = b"--" + match.group(1).encode()
    wanted = f'name="{name}"'.encode()
    for part in body.split(delimiter):
        head, sep, value = part.partition(b"\r\n\r\n")
        if sep and wanted in head and b"filename=" not in head:
            return value.removesuffix(b"\r\n").decode("utf-8", "replace").strip()
    return ""


def decoded_for_peek(body: bytes, encoding: str, limit: int) -> bytes | None:
    """The body as JSON text, for reading the model only; the node still gets the original bytes.

    gzip and deflate come with Python; zstd and br bodies (Ollama accepts zstd on /v1/responses)
    cannot be read here, so such a request is routed without knowing its model. Inflating
    beyond `limit` raises BodyTooLarge: a few kilobytes of gzip can stand for gigabytes.
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    for wbits in (47, -15):  # gzip or zlib header, then raw deflate
        try:
            text = zlib.decompressobj(wbits).decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(text) > limit:
            raise BodyTooLarge(limit, inflated=True)
        return text
    return None


def peek(
    route: Route,
    body: bytes,
    headers: Mapping[str, str],
    path_param: str = "",
    limit: int = 64 * 2**20,
) -> Peek:
    content_type = headers.get("Content-Type", "")
    payload: dict[str, Any] | None = None
    pairs: list[tuple[str, Any]] = []
    model = path_param
    text = decoded_for_peek(body, headers.get("Content-Encoding", ""), limit) if body else b""
    if content_type.lower().startswith("multipart/form-data"):
        model = model or multipart_field(text or b"", content_type, "model")
    elif text:
        payload, pairs = read_object(text)
    fields = go_fields(pairs)
    if not model:
        for field in route.model_fields:  # Ollama: cmp.Or(req.Model, req.Name)
            candidate = fields.get(field)
            if isinstance(candidate, str) and candidate.strip():
                model = candidate
                break
    stream = fields.get("stream")
    return Peek(
        body=body,
        payload=payload,
        model=model,
        stream=stream if isinstance(stream, bool) else route.streams_by_default,
        large=len(text or b"") > INLINE_BYTES,
    )


async def peek_body(
    route: Route, body: bytes, headers: Mapping[str, str], path_param: str, limit: int
) -> Peek:
    """`peek`, on the event loop for a small plain body, in a worker thread otherwise."""
    encoding = headers.get("Content-Encoding", "").strip().lower()
    if len(body) <= INLINE_BYTES and encoding in ("", "identity"):
        return peek(route, body, headers, path_param, limit)
    return await asyncio.to_thread(peek, route, body, headers, path_param, limit)
