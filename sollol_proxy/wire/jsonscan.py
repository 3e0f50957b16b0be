"""The top-level members of a JSON object, found the way Go's encoding/json reads a body, at a
bounded cost and without building the values.

Ollama decodes a body with `json.NewDecoder(body).Decode(&req)`: the first JSON value counts and
trailing bytes are ignored; nesting deeper than 10000 is a syntax error (`invalid character '['
exceeded max depth`); invalid UTF-8 inside strings becomes U+FFFD; an object key matches a
struct field exactly or case-insensitively (Unicode simple folding), and the last matching key
wins. A body can hold tens of megabytes of small values; building them as Python objects costs
about 30 times the body, and Python's own parser recurses. This module only walks the
structure: strings are skipped with `bytes.find`, containers by jumping between brackets and
quotes, and the walk stops after a budget of strings and brackets (`TooComplex`). Values are
parsed afterwards, one member at a time, by the caller (`peek.py`).

The walk is at least as permissive as Go on anything Go accepts (it does not validate numbers,
literals or bracket pairs), so it never misses a model Go would read; on what Go rejects it may
still find one, which is harmless: the node rejects the body anyway.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

import orjson

MAX_DEPTH = 10000  # encoding/json's maxNestingDepth: the top-level object counts as one level

# Every regex runs over at most this many bytes per call: the scan runs in a worker thread, and
# a call into the regex engine holds the GIL (so the event loop) until it returns.
WINDOW = 1 << 20

_WHITESPACE = re.compile(rb"[ \t\r\n]*+")
_SCALAR_END = re.compile(rb"[,}\] \t\r\n]")
# Inside a string, from its first backslash: plain runs and escape pairs (up to a quote).
_ESCAPED_RUN = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
_QUOTE, _BACKSLASH = b'"', b"\\"
MAX_KEY_BYTES = 1024


class TooComplex(Exception):
    """The body holds more strings and containers than the proxy reads for one request."""


class TooDeep(Exception):
    """Nested deeper than Go reads: its error is `invalid character '<bracket>' exceeded max
    depth` (scanner.go pushParseState), which `str()` of this exception is."""

    def __init__(self, bracket: str) -> None:
        super().__init__(f"invalid character '{bracket}' exceeded max depth")


@dataclass(frozen=True, slots=True)
class Member:
    key: str
    start: int  # the value's first byte
    end: int  # one past its last byte
    # What building the value would create: 1, plus its strings, containers and elements.
    cost: int


def go_replace(error: UnicodeError) -> tuple[str, int]:
    """Decode error handler: each invalid byte becomes one U+FFFD, as Go's utf8.DecodeRune does
    (Python's own "replace" turns a truncated sequence into a single U+FFFD)."""
    assert isinstance(error, UnicodeDecodeError)
    return "\ufffd", error.start + 1


GO_REPLACE = "sollol-go-replace"
codecs.register_error(GO_REPLACE, go_replace)

# Go's foldName: ASCII upper case, other runes ToUpper(ToLower(r)). These are the runes outside
# ASCII that fold to an ASCII letter, so that `"\u017ftream"` (long s) names the `stream` field in Go.
_FOLDS_TO_ASCII = {"\u017f": "s", "\u212a": "k", "\u0130": "i", "\u0131": "i"}


def go_field_match(key: str, field: str) -> bool:
    """Whether a JSON object key sets the struct field tagged `field` (lower-case ASCII)."""
    if key == field:
        return True
    if len(key) != len(field):
        return False
    for got, want in zip(key, field, strict=True):
        if got != want and (got.lower() if got.isascii() else _FOLDS_TO_ASCII.get(got)) != want:
            return False
    return True


def _skip_ws(text: bytes, pos: int) -> int:
    size = len(text)
    while True:
        window = min(size, pos + WINDOW)
        match = _WHITESPACE.match(text, pos, window)
        end = match.end() if match else pos
        if end < window or window == size:
            return end
        pos = end


def _string_end(text: bytes, pos: int) -> int:
    """One past the quote closing the string whose content starts at `pos`; -1 if unterminated."""
    quote = text.find(_QUOTE, pos)
    if quote < 0:
        return -1
    backslash = text.find(_BACKSLASH, pos, quote)
    if backslash < 0:
        return quote + 1
    size = len(text)
    pos = backslash
    while True:
        window = min(size, pos + WINDOW)
        match = _ESCAPED_RUN.match(text, pos, window)
        end = match.end() if match else pos
        if end < window and text[end] == 0x22:
            return end + 1
        if end == size or (end < window and end + 1 >= size):
            return -1
        # The window ended (possibly just before an escape pair): go on from there.
        pos = end


# What a walk through a container stops at: a short string without escapes (taken whole), the
# quote opening any other string (skipped with `_string_end`), or a bracket. Numbers, literals,
# whitespace and commas in between are jumped over by the regex engine.
_TOKEN = re.compile(rb'"[^"\\]{0,256}+"|["\[\]{}]')


def _container_end(text: bytes, pos: int, budget: int) -> tuple[int, int, int] | None:
    """End, strings-and-brackets count and element count of the array or object at `pos` (a
    member's value, at depth 2); None when it is unterminated. Raises TooDeep past Go's depth and
    TooComplex past `budget` strings and brackets."""
    count = text.count
    size = len(text)
    level, tokens, elements, cursor = 0, 0, 0, pos
    while True:
        window = min(size, cursor + WINDOW)
        for match in _TOKEN.finditer(text, cursor, window):
            here = match.start()
            elements += count(b",", cursor, here)
            tokens += 1
            if tokens > budget:
                raise TooComplex
            char = text[here]
            if char == 0x22:  # "
                if match.end() - here > 1:
                    cursor = match.end()
                    continue
                cursor = _string_end(text, here + 1)
                if cursor < 0:
                    return None
                break  # a long or escaped string: the scan resumes after it
            cursor = here + 1
            if char in (0x5B, 0x7B):  # [ {
                level += 1
                if level + 1 > MAX_DEPTH:
                    raise TooDeep(chr(char))
                continue
            level -= 1
            if level == 0:
                return cursor, tokens, elements
        else:
            if window == size:
                return None  # the body ended inside the container
            elements += count(b",", cursor, window)
            cursor = window


def _value_end(text: bytes, pos: int, budget: int) -> tuple[int, int, int] | None:
    """End, strings-and-brackets count and element count of the value at `pos`."""
    if pos >= len(text):
        return None
    first = text[pos]
    if first == 0x22:  # "
        end = _string_end(text, pos + 1)
        return None if end < 0 else (end, 1, 0)
    if first in (0x5B, 0x7B):  # [ {
        return _container_end(text, pos, budget)
    size, start = len(text), pos
    while pos < size:
        match = _SCALAR_END.search(text, pos, min(size, pos + WINDOW))
        if match is not None:
            return None if match.start() == start else (match.start(), 0, 0)
        pos += WINDOW
    return None


def decode_key(raw: bytes) -> str | None:
    """A JSON string (with its quotes) as Go reads it; None if it is not one."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            value = orjson.loads(raw.decode("utf-8", GO_REPLACE))
        except orjson.JSONDecodeError:
            return None
    return value if isinstance(value, str) else None


def members(text: bytes, budget: int) -> list[Member] | None:
    """The members of the JSON object `text` starts with, in order, duplicates included.

    None when Go would not read an object there: another type, or a syntax error inside the
    object. Bytes after the object are ignored, as Go's Decoder does. Raises TooDeep for nesting
    deeper than `MAX_DEPTH`, and TooComplex after `budget` strings and brackets.
    """
    size = len(text)
    pos = _skip_ws(text, 0)
    if pos >= size or text[pos] != 0x7B:
        return None
    found: list[Member] = []
    pos = _skip_ws(text, pos + 1)
    if pos < size and text[pos] == 0x7D:
        return found
    spent = 1
    while pos < size and text[pos] == 0x22:
        key_end = _string_end(text, pos + 1)
        if key_end < 0:
            return None
        # A key longer than any field name is never decoded: it names no field.
        key = decode_key(text[pos:key_end]) if key_end - pos <= MAX_KEY_BYTES else ""
        pos = _skip_ws(text, key_end)
        if key is None or pos >= size or text[pos] != 0x3A:  # :
            return None
        start = _skip_ws(text, pos + 1)
        ended = _value_end(text, start, budget - spent)
        if ended is None:
            return None
        end, tokens, elements = ended
        spent += tokens + 1
        if spent > budget:
            raise TooComplex
        found.append(Member(key, start, end, 1 + tokens + elements))
        pos = _skip_ws(text, end)
        if pos < size and text[pos] == 0x7D:  # }
            return found
        if pos >= size or text[pos] != 0x2C:  # ,
            return None
        pos = _skip_ws(text, pos + 1)
    return None
