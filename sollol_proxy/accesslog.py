"""One access-log line per request, written when the request is over (streams included)."""

from __future__ import annotations

import logging

from .record import RequestRecord

log = logging.getLogger("sollol.access")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def log_request(record: RequestRecord) -> None:
    tokens = (
        "-"
        if record.tokens_in is None and record.tokens_out is None
        else f"{record.tokens_in or 0}/{record.tokens_out or 0}"
    )
    log.info(
        '%s %s "%s %s" model=%s node=%s status=%d outcome=%s queue_ms=%s ttft_ms=%s '
        'duration_ms=%s tokens=%s route="%s"',
        record.request_id,
        record.client or "-",
        record.method,
        record.endpoint,
        record.model or "-",
        record.node or "-",
        record.status,
        record.outcome.value,
        _ms(record.queue_s),
        _ms(record.ttft_s),
        _ms(record.duration_s),
        tokens,
        record.route,
    )
