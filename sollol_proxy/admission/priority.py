"""A request's priority: the seed's `?priority=` query parameter or the `X-Sollol-Priority` header.

The seed's scale: 1 to 10, 10 most urgent (critical), 5 normal, 1 batch; 0 is accepted as the
lowest of all. Admission control orders waiting requests by it (see admission.py).
"""

from __future__ import annotations

from aiohttp import web

PRIORITY_HEADER = "X-Sollol-Priority"
DEFAULT_PRIORITY = 5
NAMED = {"batch": 1, "low": 2, "normal": 5, "high": 8, "critical": 10}


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
