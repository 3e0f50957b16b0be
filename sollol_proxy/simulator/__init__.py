"""A simulated Ollama node for tests: real sockets, Ollama's wire behaviour.

It reproduces what a transparent proxy can observe of an Ollama server (v0.33, see
/work/shared/reference/ollama-api.md): routes, exact content types (including the charset
differences), Go JSON field order and omitempty, NDJSON one object per write, SSE for /v1,
Ollama's error strings, gin's 404/405/redirects, CORS (``node.cors``: the node's
OLLAMA_ORIGINS, see ``wire/cors.py``), the Host check, no Server header, and the
scheduler's physics (slots, one load at a time, eviction, keep_alive, num_ctx reloads).

Framing is net/http's (see ``framing``): a non-streamed body of at most 2048 bytes goes out
with ``Content-Length``, a larger one (a big /api/show, /api/tags, /api/embed, /v1 body)
with ``Transfer-Encoding: chunked`` in a single chunk; HEAD answers carry no body. Request
bodies are never decoded: like gin, the node ignores ``Content-Encoding``, so a gzip body
is invalid JSON (400, ``invalid character '\\x1f' looking for beginning of value``).

Not simulated: /v1/responses, /v1/messages, /v1/audio/transcriptions, /api/me,
/api/signout and /api/experimental/* answer ``404 page not found`` like an older Ollama;
thinking, tool calls, images, logprobs and structured output are accepted but ignored;
``:cloud`` models are unknown models.

Fault knobs live on ``node.faults`` (a mutable dataclass):

- ``refuse``: new connections are accepted and reset at once (the node looks dead).
- ``reset_before_headers``: read the request, then reset the connection (every route).
- ``reset_after_chunks = N``: NDJSON/SSE streams send N chunks, then reset.
- ``first_byte_delay``: extra seconds before scheduling on inference routes.
- ``status_error = (status, message)``: inference routes fail as the scheduler does
  (``c.JSON``, so ``application/json; charset=utf-8``; /v1 wraps it in the OpenAI envelope).
- ``mid_stream_error = (after_chunks, message)``: a runner failure on generate/chat (and
  their /v1 forms) after that many chunks: an ``{"error":...}`` line and the end of the
  stream (HTTP 200); with 0 chunks, a 500 with ``application/json`` and no charset, as
  streamResponse answers it; with ``"stream": false``, a 500 through ``c.JSON``. On /v1 SSE
  it is the derived Ollama behaviour: one empty chunk with ``"model":""``, no ``[DONE]``.
- ``stall_after_chunks: int | None = None``: NDJSON/SSE streams send N chunks (0: not even
  the headers), then go silent on the open connection, holding the request's slot, until
  the client goes away (counted in ``node.cancelled``) or the node stops (the connection is
  reset, so ``stop()`` stays quick). For a proxy's idle-read timeout.
- ``truncate_body: int | None = None``: non-streamed JSON responses (``application/json``
  with or without charset: results and errors; not HEAD) announce the full
  ``Content-Length`` (even above 2048 bytes), write the first N bytes, then reset the
  connection; recorded as those N bytes with ``complete=False``. No effect on bodies of
  at most N bytes.

Observation: ``node.requests`` / ``node.responses`` (exact body bytes written; blob uploads
are recorded with an empty body), ``node.cancelled``, ``node.in_flight()``,
``node.loaded_models()``, ``node.num_parallel``, ``node.slots(model)`` (a ``SlotView`` per
KV slot of the model's runner: index, text held, tokens, busy, last use; empty when not
loaded) and ``node.slot_uses`` (a ``SlotUse`` per chat/generate request: model, slot
index, rendered prompt, prompt tokens, cached tokens).

Scheduler physics (§5), set through ``SimulatedNode(...)`` keyword arguments:

- ``num_parallel: int = 1``: OLLAMA_NUM_PARALLEL, slots per runner, fixed when it loads
  (models without the completion capability and the single-slot families of §5.1 get 1);
  requests beyond them wait on the runner without limit and no 503. The wait is inside
  ``total_duration`` only, so total - load - prompt_eval - eval is the slot wait.
  ``await node.restart(num_parallel=4)`` restarts the node as ``ollama serve`` restarts:
  connections drop, every runner and its cache are gone, same address, counters kept.
  ``max_loaded_models: int = 3`` and
  ``vram_bytes: int = 24 GiB``: a load that would exceed either (sizes from
  ``SimModel.size``) evicts runners in findRunnerToUnload order (shortest session, then
  model name; the first idle one, else wait for the first one's requests to finish).
  Loads are one at a time per node; requests for a loaded model never wait on them.
- ``load_delay: float = 0.0`` seconds per load, plus ``model.size / load_bytes_per_s``
  when ``load_bytes_per_s: float | None = None`` is set. A num_ctx change reloads.
- ``prompt_tokens_per_s: float | None = None``: prefill rate (None: instant) for the part
  of the prompt the prefix cache does not cover; ``token_delay: float = 0.0``: seconds
  per generated token after the first; ``speed: float = 1.0`` divides both (a faster GPU).
- ``batch_slowdown: float = 0.0``: batched decode; each token takes
  ``token_delay / speed * (1 + batch_slowdown * (busy - 1))`` where ``busy`` is the number
  of the runner's slots held at that moment (0: decode speed ignores the other slots).
- ``keep_alive`` (default 300 s) as OLLAMA_KEEP_ALIVE; requests may override it.
- Prefix (KV) cache, per runner, like llama-server (see ``kvcache``): each slot keeps the
  rendered prompt plus the answer (chat messages render as ``<|role|>content\n``, the
  answer as ``<|assistant|>output\n``; tokens = ceil(chars / 4)); a request takes the
  idle slot sharing the longest prefix with its prompt (if above 10 % of it, llama.cpp's
  ``slot_prompt_similarity``; the lowest index among equals; else the least recently
  used) and reuses the prefix it shares, minus at least one token. A reload or unload
  drops the cache. ``prompt_eval_count`` is the whole prompt, ``prompt_eval_duration``
  only the uncached part. ``deterministic=True`` fixes the reported durations (from the
  counts alone, so identical requests give identical bytes); the cache still works.

Counters on ``node.stats`` (``NodeStats``, mutable; ``node.stats.reset()`` zeroes it):
``requests`` (completed chat/generate/embed requests), ``loads`` (reloads included),
``evictions``, ``prompt_tokens`` (sum of prompt_eval_count over chat/generate),
``cached_tokens`` (prompt tokens reused from the prefix cache), ``queue_wait`` (seconds
spent waiting for a parallel slot) and ``load_wait`` (seconds spent waiting for loads,
including behind other models' loads and evictions).
"""

from sollol_proxy.simulator.core import DETERMINISTIC_CREATED_AT
from sollol_proxy.simulator.kvcache import SlotUse, SlotView
from sollol_proxy.simulator.models import (
    ModelName,
    SimModel,
    default_catalog,
    display_name,
    parse_name,
)
from sollol_proxy.simulator.node import SimulatedNode
from sollol_proxy.simulator.scheduler import NodeStats
from sollol_proxy.simulator.wire import Faults, RecordedRequest, RecordedResponse

__all__ = [
    "DETERMINISTIC_CREATED_AT",
    "Faults",
    "ModelName",
    "NodeStats",
    "RecordedRequest",
    "RecordedResponse",
    "SimModel",
    "SimulatedNode",
    "SlotUse",
    "SlotView",
    "default_catalog",
    "display_name",
    "parse_name",
]
