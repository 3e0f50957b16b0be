"""Client-controlled text as it may appear in a log line: one line, bounded.

A model name, a path or a header value is chosen by whoever sends the request. Written as is, a
line break forges a log line and a 5 MB name writes a 5 MB line. `loggable` escapes every control
character (and the backslash, so that an escape cannot be faked) and truncates.
"""

from __future__ import annotations

import re

MAX_LOGGED = 200  # characters of one client-controlled value
# C0, DEL and C1 controls, and the two Unicode line separators some log viewers honour.
_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def truncated(value: object, limit: int = MAX_LOGGED) -> str:
    """At most `limit` characters of the value, saying how many were left out."""
    text = str(value)
    extra = len(text) - limit
    return f"{text[:limit]}...({extra} more characters)" if extra > 0 else text


def loggable(value: object, limit: int = MAX_LOGGED) -> str:
    """Truncated, then escaped: safe to write into a line of text."""
    return _UNSAFE.sub(_escape, truncated(value, limit))
