"""A node's answer head, as the node protocol (nodewire.py) reads it: the status line and fields
parsed, and the body's framing they announce decided.

The errors are those aiohttp's parser raises for the same faults (reference 1.4), so that the
reasons the proxy reports do not change.
"""

from __future__ import annotations

import aiohttp
from multidict import CIMultiDict

_NO_BODY_STATUS = frozenset({204, 304})
# Body framings: the head is still coming; a sized body; a chunked one; one that ends when the
# node closes; none (the answer is whole).
HEAD, LENGTH, CHUNKED, UNTIL_CLOSE, DONE = range(5)


class BadAnswer(aiohttp.ClientError):
    """The node's answer is not valid HTTP/1.1 framing."""


def framing(status: int, headers: CIMultiDict[str]) -> tuple[int, int, bool]:
    """The body's framing, its length (sized bodies), and whether the connection must close."""
    close = "close" in headers.get("Connection", "").lower()
    coding = headers.get("Transfer-Encoding")
    length = headers.getall("Content-Length", ())
    # Checked whatever the status: the relay copies the length onto the client's answer.
    if length and (len(set(length)) != 1 or not length[0].isdigit() or not length[0].isascii()):
        raise BadAnswer("400, message='Invalid Content-Length'")
    if status in _NO_BODY_STATUS:
        return DONE, 0, close
    if coding is not None:
        if coding.rsplit(",", 1)[-1].strip().lower() != "chunked":
            raise BadAnswer("400, message='Transfer-Encoding without chunked'")
        if length:  # which framing the node meant is unknown: refused, as aiohttp does
            raise BadAnswer("400, message='Transfer-Encoding can't be present with Content-Length'")
        return CHUNKED, 0, close
    if length:
        left = int(length[0])
        return (LENGTH if left else DONE), left, close
    return UNTIL_CLOSE, 0, True


def parse_head(head: bytes) -> tuple[int, str, CIMultiDict[str], bool]:
    """Status, reason, fields and whether the node speaks HTTP/1.0, from the head's bytes."""
    lines = head.split(b"\r\n")
    # A lone CR or LF, or a NUL, anywhere in the head: refused, as aiohttp's parser refuses
    # them in a field (and its server would refuse to write them back to the client).
    ends = len(lines) - 1
    if head.count(b"\r") != ends or head.count(b"\n") != ends or b"\x00" in head:
        raise BadAnswer(f"400, message='Invalid character in head {lines[0][:80]!r}'")
    parts = lines[0].split(b" ", 2)
    if (
        len(parts) < 2
        or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(parts[1]) != 3
        or not parts[1].isdigit()
    ):
        raise BadAnswer(f"400, message='Bad status line {lines[0][:80]!r}'")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[-1] in b" \t" or name[0] in b" \t":
            raise BadAnswer(f"400, message='Bad header line {line[:80]!r}'")
        # Decoded as aiohttp's parser does, so that relayed values are written back unchanged.
        headers.add(
            name.decode("utf-8", "surrogateescape"),
            value.strip(b" \t").decode("utf-8", "surrogateescape"),
        )
    reason = parts[2].decode("utf-8", "surrogateescape") if len(parts) == 3 else ""
    return int(parts[1]), reason, headers, parts[0] == b"HTTP/1.0"
