"""The request fields that change where a request should run: load-time options, the output
limit, and whether the answer is structured. Read from the parsed body, never re-serialised."""

from __future__ import annotations

from typing import Any, Final

# Load-time options (reference 3.19): a change in any of them reloads the runner (5.4).
RUNNER_OPTIONS: Final = (
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "use_mmap",
    "num_thread",
    "draft_num_predict",
)
# /v1 routes have no `options` (Ollama ignores it there, reference 3.17).
NATIVE: Final = frozenset({"chat", "generate", "embed", "embeddings"})
# Iterating the options in name order makes the result sorted without a sort per request.
_SORTED: Final = tuple(sorted(RUNNER_OPTIONS))
_SCALARS: Final = (bool, int, float, str)


def load_options(options: dict[str, Any]) -> tuple[tuple[str, object], ...]:
    # Only scalars: anything else is a 500 from Ollama anyway, and keeping it would make the
    # profile unhashable.
    found: list[tuple[str, object]] = []
    for name in _SORTED:
        value = options.get(name)
        if isinstance(value, _SCALARS):
            found.append((name, value))
    return tuple(found)


def _positive(value: object) -> int | None:
    # bool is an int subclass; `"max_tokens": true` is not a limit.
    if type(value) is int:
        return value if value > 0 else None
    # The bound also rejects inf and nan, which Python's json module accepts.
    if type(value) is float and 0 < value < 1e18:
        return int(value)
    return None


def output_limit(endpoint: str, payload: dict[str, Any]) -> int | None:
    if endpoint in NATIVE:
        options = payload.get("options")
        return _positive(options.get("num_predict")) if isinstance(options, dict) else None
    if endpoint == "v1_responses":
        return _positive(payload.get("max_output_tokens"))
    limit = _positive(payload.get("max_tokens"))
    if limit is None and endpoint == "v1_chat":
        limit = _positive(payload.get("max_completion_tokens"))
    return limit


def structured(endpoint: str, payload: dict[str, Any]) -> bool:
    if endpoint in NATIVE:
        # "format": "json" or a schema object; "" and null mean free text.
        return bool(payload.get("format"))
    if endpoint == "v1_chat":
        return _structured_format(payload.get("response_format"))
    if endpoint == "v1_responses":
        text = payload.get("text")
        return isinstance(text, dict) and _structured_format(text.get("format"))
    return False


def _structured_format(value: object) -> bool:
    if isinstance(value, dict):
        return value.get("type", "text") != "text"
    return bool(value)
