"""A request's head, read by aiohttp's own parser (llhttp), and whether the data plane serves it.

The data plane serves only the plain case of the hot routes: `POST` of a model request over
HTTP/1.1, the target exactly the route's path, a `Content-Length` body within the body limit,
no `Transfer-Encoding`, `Expect`, `Upgrade` or `Connection: close`, the whole head within the
header limits; and a `GET` of a fleet view, without a body, on the same terms. Everything else (and anything the parser refuses) goes to the aiohttp
application, which answers it as it always has: its 4xx for a bad request, 100-continue, query
strings. Handing over is therefore always safe; what is served here is what both
front-ends answer alike.

The parser is the one aiohttp's server uses, with the same limits, fed one head at a time: the
headers are decoded exactly as on the aiohttp path. (httptools, the other binding of llhttp,
parses a head in the same 4-5 us: it would add a dependency and nothing else.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser
from multidict import CIMultiDictProxy

# The routes that carry the traffic (Kind.MODEL in wire/routes.py), as raw request targets.
HOT_TARGETS = frozenset(
    {
        b"/api/chat",
        b"/api/generate",
        b"/api/embed",
        b"/api/embeddings",
        b"/api/show",
        b"/v1/chat/completions",
        b"/v1/completions",
        b"/v1/embeddings",
    }
)
# The fleet views clients poll between model requests (Open WebUI, the ollama CLI): served
# here too, so that such a client's connection stays on the data plane.
VIEW_TARGETS = frozenset({b"/api/version", b"/api/tags", b"/api/ps", b"/v1/models"})
HEAD_END = b"\r\n\r\n"
# 100-continue is aiohttp's to answer; a body framed otherwise than by its length is aiohttp's.
_HANDED_OVER = ("Expect", "Transfer-Encoding")


@dataclass(frozen=True, slots=True)
class Head:
    method: str
    target: str
    headers: CIMultiDictProxy[str]
    content_length: int | None  # None: a GET without a body
    body: StreamReader  # fed by the connection as the body's bytes arrive


def read_head(
    head: bytes,
    protocol: BaseProtocol,
    loop: asyncio.AbstractEventLoop,
    *,
    max_header_bytes: int,
    max_fields: int,
    max_body_bytes: int,
) -> Head | None:
    """The head (request line to the blank line, included) of a request this plane serves, or
    None when the aiohttp application should answer it."""
    parts = head[: head.find(b"\r\n")].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or len(head) > max_header_bytes:
        return None
    method, target = parts[0], parts[1]
    post = method == b"POST" and target in HOT_TARGETS
    if not post and not (method == b"GET" and target in VIEW_TARGETS):
        return None
    parser = HttpRequestParser(
        protocol,
        loop,
        2**16,
        max_line_size=max_header_bytes,
        max_field_size=max_header_bytes,
        max_headers=max_fields,
        auto_decompress=False,
    )
    try:
        messages, _, _ = parser.feed_data(head)
    except HttpProcessingError:
        return None  # aiohttp answers it, with the same parser
    if len(messages) != 1:
        return None
    message, body = messages[0]
    headers = message.headers
    if (
        message.chunked
        or message.upgrade
        or message.should_close
        or any(name in headers for name in _HANDED_OVER)
    ):
        return None
    length = headers.get("Content-Length")
    if not post:  # a view: a GET with a body is aiohttp's to answer
        return None if length is not None else Head("GET", message.path, headers, None, body)
    if length is None or int(length) > max_body_bytes:
        return None  # the aiohttp path answers 413 for a body over the limit
    return Head("POST", message.path, headers, int(length), body)
