"""One request as the access log and the metrics see it, filled in as it passes through the proxy.

The handler creates it, the routing and the forwarder fill in what they learn (node, status,
time to first byte, failed attempts, tokens), and when the request is over it goes to every
`RecordSink` (the access log, and anything else that counts requests). Labels taken from it
must stay bounded: `endpoint` is a route template, never the raw path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"  # answered with a status below 400 and every byte relayed
    ERROR = "error"  # answered with a status of 400 or more (the node's or the proxy's)
    MIDSTREAM_FAILURE = "midstream_failure"  # the node broke after the client got bytes
    CLIENT_CLOSED = "client_closed"  # the client went away before the answer was complete
    CUT_BY_SHUTDOWN = "cut_by_shutdown"  # still running when the shutdown's grace period ended
    CLIENT_STALLED = "client_stalled"  # the client stopped reading: cut after limits.write_timeout


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str
    endpoint: str  # bounded: a route template such as /api/chat or /v1/models/:model, or "other"
    client: str | None
    started: float = field(default_factory=time.monotonic)
    model: str = ""
    priority: int | None = None
    node: str = ""  # the node that answered ("" when none did)
    route: str = ""  # the X-Sollol-Route value
    reason: str = ""  # its bounded category (a routing.Reason value), "" when no node answered
    strategy: str = ""
    task: str = ""  # the analysis' task type, for model requests
    stream: bool = False  # a streamed answer (only then is ttft_s a time to first token)
    status: int = 0
    outcome: Outcome = Outcome.OK
    admitted: bool = False  # went through admission control (queue_s is its wait)
    queue_s: float = 0.0  # time spent waiting for a slot in the proxy
    ttft_s: float | None = None  # until the first byte of the answer reached the client
    duration_s: float = 0.0
    tokens_in: int | None = None  # from Ollama's final object, when the answer carries one
    tokens_out: int | None = None
    # nodes tried before the one that answered, and why each was given up
    failed_attempts: list[tuple[str, str]] = field(default_factory=list)
    retries: int = 0  # attempts sent to another node after a failure (each counted once)
    key: str = ""  # the name of the API key the request came with ("" without keys)

    def finish(self, status: int) -> None:
        self.duration_s = time.monotonic() - self.started
        if not self.status:
            self.status = status
        if self.outcome is Outcome.OK and self.status >= 400:
            self.outcome = Outcome.ERROR


RecordSink = Callable[[RequestRecord], None]
