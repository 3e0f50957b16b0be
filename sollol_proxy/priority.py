"""A request's priority: the seed's `?priority=` query parameter or the `X-Sollol-Priority` header.

Read and validated here and recorded with the routing decision; admission control (the priority
queue) is what will act on it.
"""

from __future__ import annotations

from aiohttp import web

PRIORITY_HEADER = "X-Sollol-Priority"
DEFAULT_PRIORITY = 5
NAMED = {"low": 2, "normal": 5, "high": 8, "critical": 10}


class BadPriority(ValueError):
    pass


def read_priority(request: web.Request) -> int:
    raw = request.headers.get(PRIORITY_HEADER) or request.query.get("priority")
    if raw is None or not raw.strip():
        return DEFAULT_PRIORITY
    text = raw.strip().lower()
    if text in NAMED:
        return NAMED[text]
    if text.isdigit() and 0 <= int(text) <= 10:
        return int(text)
    raise BadPriority(f"invalid priority {raw!r}: expected 0 to 10 or one of {', '.join(NAMED)}")
