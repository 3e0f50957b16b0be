"""The middleware that decides who may make a request, and the `Grant` the handler consults once
it knows the model and the priority.

Refusals use Ollama's envelope on `/api/*` and the OpenAI one on `/v1/*` (`error_response`): 401
without a valid key (with `WWW-Authenticate: Bearer`), 403 for a route or model the key may not
use, 429 with `Retry-After` past a per-key limit. Once a key is accepted, its header is removed
from the request the rest of the proxy sees, so that it is neither forwarded to a node (unless
`auth.forward_authorization`) nor ever logged.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from sollol_proxy.config import Config
from sollol_proxy.config.access import ADMIN, ApiKey
from sollol_proxy.guard.keys import CREDENTIAL_HEADERS, digest, presented_key
from sollol_proxy.guard.quota import KeyUsage, Refused, admit, charge
from sollol_proxy.guard.scopes import Need, is_loopback, is_open, need
from sollol_proxy.wire.errors import error_response
from sollol_proxy.wire.headers import NODE_HEADER
from sollol_proxy.wire.logsafe import loggable
from sollol_proxy.wire.names import normalize_model

log = logging.getLogger("sollol.guard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NO_KEY = "none"  # the metrics label of requests refused before a key was known
MANAGEMENT_ONLY_HERE = (
    "sollol-proxy: management routes (pull, push, create, copy, delete, blobs) answer only"
    " clients on the proxy's machine when no API keys are configured; configure auth.keys or"
    " set auth.open_management"
)


@dataclass(frozen=True, slots=True)
class Grant:
    """What the key a request came with allows, for the checks that need the body."""

    key: ApiKey
    usage: KeyUsage

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def max_priority(self) -> int:
        return self.key.max_priority

    def allows_model(self, model: str) -> bool:
        """Whether the key may use `model` (a normalised name; "" when the proxy could not
        read one, which a key limited to some models is not allowed)."""
        if not self.key.models:
            return True
        return bool(model) and any(_matches(model, pattern) for pattern in self.key.models)

    def refuse_model(self, model: str) -> Refused:
        """The 403 for a model the key may not use (counted for the key's metrics)."""
        self.usage.refused["model"] += 1
        shown = f"model '{loggable(model, 100)}'" if model else "a request whose model is unknown"
        return Refused(403, "model", f"API key '{self.name}' may not use {shown}")


def _matches(model: str, pattern: str) -> bool:
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(model, pattern.lower())
    return model == normalize_model(pattern)


GRANT = web.RequestKey("sollol_grant", Grant)
_DROPPED = frozenset(name.title() for name in CREDENTIAL_HEADERS)


def grant_of(request: web.Request) -> Grant | None:
    return request.get(GRANT)


def refusal(path: str, refused: Refused) -> web.Response:
    response = error_response(path, refused.status, refused.message)
    if refused.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="sollol-proxy"'
    if refused.retry_after is not None:
        response.headers["Retry-After"] = str(refused.retry_after)
    return response


class Guard:
    def __init__(self, config: Config) -> None:
        self.usage: dict[str, KeyUsage] = {}
        self.refused_without_key: dict[str, int] = {}  # reason -> count
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Keys added or removed by a reload apply to the next request; usage stays per name."""
        self._auth = config.auth
        self._keys = {k.sha256: k for k in config.auth.keys}
        for key in config.auth.keys:
            self.usage.setdefault(key.name, KeyUsage())

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def observe(self, record: object) -> None:
        """RecordSink: charge the tokens Ollama counted to the request's key."""
        key = getattr(record, "key", "")
        usage = self.usage.get(key) if key else None
        if usage is not None:
            charge(
                usage,
                time.monotonic(),
                getattr(record, "tokens_in", None),
                getattr(record, "tokens_out", None),
            )

    def _refused(self, request: web.Request, refused: Refused, key: str = NO_KEY) -> web.Response:
        usage = self.usage.get(key)
        if usage is not None:
            usage.refused[refused.reason] += 1
        else:
            self.refused_without_key[refused.reason] = (
                self.refused_without_key.get(refused.reason, 0) + 1
            )
        log.info(
            "refused %s %s from %s: %s",
            request.method,
            loggable(request.path),
            request.remote or "-",
            refused.message,
        )
        return refusal(request.path, refused)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = need(request.method, request.path)
        if not self._keys:
            if (
                needed is Need.MANAGEMENT
                and not self._auth.open_management
                and not is_loopback(request.remote)
            ):
                return self._refused(
                    request, Refused(403, "remote_management", MANAGEMENT_ONLY_HERE)
                )
            return await handler(request)
        if is_open(request.method, request.path):
            return await handler(request)
        token = presented_key(request.headers)
        key = self._keys.get(digest(token)) if token is not None else None
        if key is None:
            message = (
                "sollol-proxy: invalid API key"
                if token is not None
                else "sollol-proxy: an API key is required (Authorization: Bearer <key>)"
            )
            return self._refused(request, Refused(401, "unauthorized", message))
        if key.scope != ADMIN and (needed is not Need.USER or NODE_HEADER in request.headers):
            what = f"pin a node with {NODE_HEADER}" if needed is Need.USER else "use this route"
            refused = Refused(
                403, "scope", f"API key '{key.name}' (scope {key.scope}) may not {what}"
            )
            return self._refused(request, refused, key.name)
        usage = self.usage[key.name]
        try:
            admit(key, usage, time.monotonic())
        except Refused as refused:
            return self._refused(request, refused, key.name)
        if not self._auth.forward_authorization:
            request = request.clone(
                headers=[(k, v) for k, v in request.headers.items() if k.title() not in _DROPPED]
            )
        request[GRANT] = Grant(key, usage)
        usage.in_flight += 1
        try:
            return await handler(request)
        finally:
            usage.in_flight -= 1
