"""One access-log line per request, written when the request is over (streams included).

The same fields in both formats: `key=value` text, or top-level keys of a JSON line (see
logformat.py). Times are milliseconds; absent values are `-` in text and null in JSON. A value
the client chose (the model name) is truncated, and every value is escaped in the text format
(`wire/logsafe.py`), so that none can break the line or make it huge. The line is built once, as
one string, and only when `sollol.access` logs at INFO (`log_level` `info` or `debug`); writing
it is the log writer's, off the event loop (logwriter.py).
"""

from __future__ import annotations

import logging

from sollol_proxy.forward.record import RequestRecord
from sollol_proxy.wire.logsafe import loggable, truncated

log = logging.getLogger("sollol.access")


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def access_fields(record: RequestRecord) -> dict[str, object]:
    return {
        "request_id": record.request_id,
        "client": record.client,
        "method": record.method,
        "route": record.endpoint,
        "model": truncated(record.model) if record.model else None,  # the client's choice
        "node": record.node or None,
        "status": record.status,
        "outcome": record.outcome.value,
        "queue_ms": _ms(record.queue_s),
        "ttft_ms": _ms(record.ttft_s),
        "duration_ms": _ms(record.duration_s),
        "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out,
        "reason": record.reason or None,
        "failovers": len(record.failed_attempts),
        "retries": record.retries,
        "routing": record.route or None,
        "key": record.key or None,
    }


def _text(value: object) -> str:
    if value is None:
        return "-"
    text = loggable(value, 10_000)  # one line: control characters escaped
    # Quoted when it would not read back as one token (the routing text has spaces).
    return f'"{text.replace(chr(34), chr(39))}"' if not text or " " in text or "=" in text else text


def log_request(record: RequestRecord) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    fields = access_fields(record)
    line = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
    # Made directly: Logger.info would look up the caller's file and line, which no format shows.
    log.handle(
        log.makeRecord(log.name, logging.INFO, "", 0, line, None, None, extra={"fields": fields})
    )
