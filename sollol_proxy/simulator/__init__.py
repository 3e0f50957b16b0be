"""A simulated Ollama node for tests: real sockets, Ollama's wire behaviour.

It reproduces what a transparent proxy can observe of an Ollama server (v0.33, see
/work/shared/reference/ollama-api.md): routes, exact content types (including the charset
differences), Go JSON field order and omitempty, NDJSON one object per write, SSE for /v1,
Ollama's error strings, gin's 404/405/redirects, the Host check, no Server header, and the
scheduler's physics (slots, one load at a time, eviction, keep_alive, num_ctx reloads).

Not simulated: /v1/responses, /v1/messages, /v1/audio/transcriptions, /api/me,
/api/signout and /api/experimental/* answer ``404 page not found`` like an older Ollama;
CORS (Origin handling) is not implemented; thinking, tool calls, images, logprobs and
structured output are accepted but ignored; ``:cloud`` models are unknown models.

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

Observation: ``node.requests`` / ``node.responses`` (exact body bytes written; blob uploads
are recorded with an empty body), ``node.cancelled``, ``node.in_flight()``,
``node.loaded_models()``.
"""

from .models import ModelName, SimModel, default_catalog, display_name, parse_name
from .node import DETERMINISTIC_CREATED_AT, SimulatedNode
from .wire import Faults, RecordedRequest, RecordedResponse

__all__ = [
    "DETERMINISTIC_CREATED_AT",
    "Faults",
    "ModelName",
    "RecordedRequest",
    "RecordedResponse",
    "SimModel",
    "SimulatedNode",
    "default_catalog",
    "display_name",
    "parse_name",
]
