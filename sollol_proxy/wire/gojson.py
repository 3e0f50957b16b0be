"""JSON bytes in the style of Go's encoding/json, for the bodies the proxy itself writes.

Forwarded bodies are never re-encoded. Only the fleet views (built from several nodes) and
the simulated node produce JSON, and they must look exactly like Ollama's: compact, keys in
the order given, and Go's HTML-safe escaping, which orjson does not do on its own.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson

# Go escapes these inside strings; outside strings JSON never contains them, so a
# byte-level replacement on orjson's output is exact.
_GO_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def dumps(value: Any) -> bytes:
    """Encode like Go's json.Marshal (no trailing newline)."""
    data = orjson.dumps(value)
    for raw, escaped in _GO_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


def dumps_line(value: Any) -> bytes:
    """Encode like Go's json.Encoder.Encode: json.Marshal plus a newline."""
    return dumps(value) + b"\n"


_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def timestamp_ns(value: Any) -> int:
    """Nanoseconds since the epoch of a Go RFC 3339 time; 0 when unparseable (sorts last)."""
    match = _TIME.match(value) if isinstance(value, str) else None
    if not match:
        return 0
    base, fraction, zone = match.groups()
    seconds = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone)).timestamp()
    return int(seconds) * 10**9 + int((fraction or "").ljust(9, "0"))
