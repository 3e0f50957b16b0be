"""The seed's Python entry point: `from sollol_proxy import connect`.

`connect()` returns an `ollama.Client` for the proxy, so every Ollama call works as it does
against one Ollama, with two additions: `priority=` on each model call (and a default for the
client), sent as `X-Sollol-Priority`; and `batch_embed(docs, model=...)`, which submits a batch
job and yields its results in document order as they are stored.

The `ollama` package is needed only here, and imported only when `connect()` is called:
`pip install 'sollol-proxy[client]'`. Nothing else in the proxy depends on it.
"""

from __future__ import annotations

import contextvars
import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

PRIORITY_HEADER = "X-Sollol-Priority"
PRIORITISED = ("chat", "generate", "embed", "embeddings")  # the calls that use a model's slot
_call_priority: contextvars.ContextVar[int | str | None] = contextvars.ContextVar(
    "sollol_priority", default=None
)


def connect(host: str | None = None, *, priority: int | str | None = None, **kwargs: Any) -> Any:
    """A client for the proxy at `host` (default: `OLLAMA_HOST`, as ollama.Client reads it).

    `priority` (1-10 or batch, low, normal, high, critical) is the default for every model
    call; `kwargs` go to ollama.Client (headers, timeout, ...)."""
    return _client_class()(host, priority=priority, **kwargs)


@functools.cache
def _client_class() -> type:
    try:
        import ollama
    except ImportError as exc:
        raise ImportError(
            "sollol_proxy.connect() needs the ollama package: pip install 'sollol-proxy[client]'"
        ) from exc

    class SollolClient(ollama.Client):  # type: ignore[misc]
        """An ollama.Client for sollol-proxy (see sollol_proxy.embed.client)."""

        def __init__(
            self, host: str | None = None, *, priority: int | str | None = None, **kwargs: Any
        ) -> None:
            super().__init__(host, **kwargs)
            self.priority = priority

        def _request(self, cls: Any, *args: Any, **kwargs: Any) -> Any:
            # Called when the public method is called, also for a stream (which is sent later):
            # the priority of that call is read now.
            priority = _call_priority.get()
            if priority is None:
                priority = self.priority
            if priority is not None:
                kwargs["headers"] = {
                    **(kwargs.get("headers") or {}),
                    PRIORITY_HEADER: str(priority),
                }
            return super()._request(cls, *args, **kwargs)

        def batch_embed(
            self,
            docs: Iterable[str | Mapping[str, Any]],
            model: str,
            *,
            poll: float = 0.5,
            **fields: Any,
        ) -> Iterator[dict[str, Any]]:
            """Submit `docs` (strings, or {"id", "text"}) as one batch job and yield each
            document's result in order, as it is stored: {"index", "id", "embedding"}, or
            {"index", "id", "error"} for a document that failed. `fields` (truncate,
            dimensions, keep_alive, options) apply to every document."""
            http = self._client
            payload = {"model": model, "docs": [d if isinstance(d, str) else dict(d) for d in docs]}
            response = http.post("/api/embed/batch", json={**payload, **fields})
            if response.status_code != 202:
                raise ollama.ResponseError(response.text, response.status_code)
            job = response.json()["id"]
            offset = 0
            while True:
                status = http.get(f"/sollol/batches/{job}")
                if status.status_code != 200:
                    raise ollama.ResponseError(status.text, status.status_code)
                over = status.json()["status"] in ("done", "failed", "cancelled")
                with http.stream(
                    "GET", f"/sollol/batches/{job}/results", params={"offset": offset}
                ) as results:
                    for line in results.iter_lines():
                        if line:
                            item = json.loads(line)
                            offset = item["index"] + 1
                            yield item
                if over:
                    return
                time.sleep(poll)

    for name in PRIORITISED:
        setattr(SollolClient, name, _with_priority(getattr(ollama.Client, name)))
    return SollolClient


def _with_priority(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, priority: int | str | None = None, **kwargs: Any) -> Any:
        token = _call_priority.set(priority)
        try:
            return method(self, *args, **kwargs)
        finally:
            _call_priority.reset(token)

    return call
