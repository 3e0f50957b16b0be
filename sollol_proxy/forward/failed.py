"""Attempts that did not produce the answer, and the error a client gets when all of them fail."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from sollol_proxy.forward.record import RequestRecord
from sollol_proxy.forward.upstream import Outgoing
from sollol_proxy.wire.errors import error_response
from sollol_proxy.wire.headers import REQUEST_ID_HEADER


@dataclass(frozen=True, slots=True)
class Failed:
    """One attempt that did not produce the answer, as the final error reports it."""

    node: str
    reason: str
    status: int  # what the client gets if this is the last word: the node's 5xx, or 502/504


def all_failed(
    request: Outgoing,
    failures: list[Failed],
    skipped: list[str],
    record: RequestRecord,
    why: str,
) -> web.Response:
    """The client's answer when no node produced one: the last failure's status (a node's own
    500, which was not relayed, becomes the gateway's 502), or 503 when no node was tried."""
    if failures:
        status = failures[-1].status
        if status >= 500 and status not in (502, 503, 504):
            status = 502
        detail = "; ".join(f"{f.node}: {f.reason}" for f in failures)
        message = f"no Ollama node could answer ({detail})"
    else:
        status = 503
        message = f"no Ollama node can take the request now ({'; '.join(skipped)})"
    if why:
        message += f"; {why}"
    response = error_response(request.path, status, message)
    response.headers[REQUEST_ID_HEADER] = record.request_id
    return response
