"""A request's priority: the seed's `?priority=` query parameter or the `X-Sollol-Priority` header.

The seed's scale: 1 to 10, 10 most urgent (critical), 5 normal, 1 batch; 0 is accepted as the
lowest of all. Admission control orders waiting requests by it (see admission.py). Only ASCII
digits and the names below are read (`int()` would also take `٣` and `²` would crash it); an API
key's `max_priority` caps the result.
"""

from __future__ import annotations

from aiohttp import web

from sollol_proxy.wire.logsafe import loggable

PRIORITY_HEADER = "X-Sollol-Priority"
DEFAULT_PRIORITY = 5
NAMED = {"batch": 1, "low": 2, "normal": 5, "high": 8, "critical": 10}


class BadPriority(ValueError):
    pass


def read_priority(request: web.Request, cap: int = 10) -> int:
    """The request's priority, at most `cap`."""
    raw = request.headers.get(PRIORITY_HEADER) or request.query.get("priority")
    if raw is None or not raw.strip():
        return min(DEFAULT_PRIORITY, cap)
    text = raw.strip().lower()
    if text in NAMED:
        return min(NAMED[text], cap)
    if len(text) <= 4 and text.isascii() and text.isdigit() and int(text) <= 10:
        return min(int(text), cap)
    raise BadPriority(
        f"invalid priority '{loggable(raw, 20)}': expected 0 to 10 or one of {', '.join(NAMED)}"
    )
