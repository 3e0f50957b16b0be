"""How log lines look: the usual text prefix, or one JSON object per line (`log_format: json`).

Structured records (the access log) carry their fields in `record.fields`; the text format shows
them as the message's `key=value` pairs, the JSON format as top-level keys. Lines go to stderr
through `logwriter.BatchingHandler`, off the event loop.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

from sollol_proxy.observe.logwriter import BatchingHandler

PLAIN = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup_logging(level: str, log_format: str = "plain") -> None:
    handler = BatchingHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(PLAIN))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # Neither format shows them: not gathered for every line.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
