"""What a request asks for, read in one cheap pass over its already-parsed JSON body.

`analyze()` runs on every proxied request, so it is pure, synchronous and allocation-light: it never
serialises anything, it touches each string once (length, UTF-8 encoding for the hash, and the
task rules in `tasks.py`), and image payloads are sampled instead of read in full.

Request shapes follow the Ollama reference (sections 3.12-3.15 native, 3.17 OpenAI/Anthropic /v1,
3.19 options, 5.4 reload triggers, 5.7 prompt cache).

Prompt-size estimate
--------------------
``prompt_tokens = ceil(chars / 4) + 4 * messages + IMAGE_TOKENS * images``, where ``chars`` counts
every text the model reads: ``system``/``instructions``, message contents (text parts only),
``prompt``, ``suffix`` and embedding ``input``. Four characters per token is the usual English
average; four tokens per message stand for the role header the chat template adds; an image costs
``IMAGE_TOKENS`` (768) tokens, a middle ground between CLIP-style encoders (576) and tiled ones
(1000+). Not counted, because reading them would mean serialising JSON: ``tools`` definitions,
tool-call arguments given as objects, ``context`` token arrays and audio parts. Embedding inputs
given as token arrays count one token per element. ``depth`` and the per-message term count a
top-level ``system``/``instructions`` as a message, since the template renders it as one.

``runner_options`` keeps only scalar values: anything else is a 500 from Ollama, and would make the
profile unhashable. A body that is not a JSON object gives an empty profile (zero tokens, no keys,
task by route, complexity ``low``).

The task table and complexity rules are in `tasks.py`, the prefix keys in `prefixes.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Final

from .prefixes import (
    _MESSAGES_SEED,
    _ROLE_BYTES,
    PROMPT_BLOCK_CHARS,
    _encode,
    _image_marker,
    _normalised_messages,
    _prompt_keys,
)
from .tasks import (
    HIGH_OUTPUT_TOKENS,
    HIGH_PROMPT_TOKENS,
    HIGH_REASONING_PROMPT_TOKENS,
    LOW_OUTPUT_TOKENS,
    LOW_PROMPT_TOKENS,
    _complexity,
    _task,
)

__all__ = [
    "COMPLEXITIES",
    "ENDPOINTS",
    "HIGH_OUTPUT_TOKENS",
    "HIGH_PROMPT_TOKENS",
    "HIGH_REASONING_PROMPT_TOKENS",
    "IMAGE_TOKENS",
    "LOW_OUTPUT_TOKENS",
    "LOW_PROMPT_TOKENS",
    "PROMPT_BLOCK_CHARS",
    "RUNNER_OPTIONS",
    "TASKS",
    "RequestProfile",
    "analyze",
]

TASKS: Final = (
    "generation",
    "chat",
    "embedding",
    "classification",
    "extraction",
    "summarization",
    "analysis",
    "code",
)
COMPLEXITIES: Final = ("low", "medium", "high")
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
# Estimated prompt tokens per image: between a 336px CLIP encoder (576) and tiled encoders (1000+).
IMAGE_TOKENS: Final = 768

ENDPOINTS: Final = (
    "chat",
    "generate",
    "embed",
    "embeddings",
    "v1_chat",
    "v1_completions",
    "v1_embeddings",
    "v1_responses",
    "v1_messages",
    "other",
)


@dataclass(frozen=True, slots=True)
class RequestProfile:
    endpoint: str  # one of ENDPOINTS
    model: str  # as given (the caller normalises names)
    runner_options: tuple[tuple[str, object], ...]  # sorted load-time options (native routes)
    prompt_tokens: int
    depth: int  # messages, counting a top-level system/instructions; 0 for prompt-style
    max_output: int | None  # requested output cap; None when unspecified, 0 for embeddings
    images: int
    task: str  # one of TASKS
    complexity: str  # one of COMPLEXITIES
    prefix_keys: tuple[tuple[bytes, int], ...]  # (key, cumulative prompt tokens), shortest first
    stream: bool


_ENDPOINT_BY_PATH: Final[dict[str, str]] = {
    "/api/chat": "chat",
    "/api/generate": "generate",
    "/api/embed": "embed",
    "/api/embeddings": "embeddings",
    "/v1/chat/completions": "v1_chat",
    "/v1/completions": "v1_completions",
    "/v1/embeddings": "v1_embeddings",
    "/v1/responses": "v1_responses",
    "/v1/messages": "v1_messages",
}
_MESSAGES_STYLE: Final = frozenset({"chat", "v1_chat", "v1_messages", "v1_responses"})
_EMBEDDING: Final = frozenset({"embed", "embeddings", "v1_embeddings"})
# /v1 routes have no `options` (Ollama ignores it there, reference 3.17).
_NATIVE: Final = frozenset({"chat", "generate", "embed", "embeddings"})
# Iterating the options in name order makes the result sorted without a sort per request.
_RUNNER_OPTIONS_SORTED: Final = tuple(sorted(RUNNER_OPTIONS))
_SCALARS: Final = (bool, int, float, str)
_SYSTEM_ROLES: Final = frozenset({"system", "developer"})


def analyze(path: str, payload: dict[str, Any] | None, model: str, stream: bool) -> RequestProfile:
    endpoint = _ENDPOINT_BY_PATH.get(path)
    if endpoint is None:
        endpoint = _ENDPOINT_BY_PATH.get(path.rstrip("/"), "other")
    if not isinstance(payload, dict):
        return _empty(endpoint, model, stream)

    runner_options: tuple[tuple[str, object], ...] = ()
    if endpoint in _NATIVE:
        options = payload.get("options")
        if isinstance(options, dict) and options:
            runner_options = _runner_options(options)

    if endpoint in _MESSAGES_STYLE:
        return _messages_profile(endpoint, payload, model, stream, runner_options)
    if endpoint in _EMBEDDING:
        prompt_tokens = _embedding_tokens(payload, endpoint)
        return RequestProfile(
            endpoint=endpoint,
            model=model,
            runner_options=runner_options,
            prompt_tokens=prompt_tokens,
            depth=0,
            max_output=0,
            images=0,
            task="embedding",
            complexity=_complexity(prompt_tokens, 0, "embedding"),
            prefix_keys=(),
            stream=stream,
        )
    if endpoint == "generate" or endpoint == "v1_completions":
        return _prompt_profile(endpoint, payload, model, stream, runner_options)
    return _empty(endpoint, model, stream)


def _empty(endpoint: str, model: str, stream: bool) -> RequestProfile:
    if endpoint in _EMBEDDING:
        task, max_output = "embedding", 0
    else:
        task, max_output = ("chat" if endpoint in _MESSAGES_STYLE else "generation"), None
    return RequestProfile(
        endpoint=endpoint,
        model=model,
        runner_options=(),
        prompt_tokens=0,
        depth=0,
        max_output=max_output,
        images=0,
        task=task,
        complexity="low",
        prefix_keys=(),
        stream=stream,
    )


def _runner_options(options: dict[str, Any]) -> tuple[tuple[str, object], ...]:
    # Only scalars: anything else is a 500 from Ollama anyway, and keeping it would make the
    # profile unhashable.
    found: list[tuple[str, object]] = []
    for name in _RUNNER_OPTIONS_SORTED:
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


def _max_output(endpoint: str, payload: dict[str, Any]) -> int | None:
    if endpoint in _NATIVE:
        options = payload.get("options")
        return _positive(options.get("num_predict")) if isinstance(options, dict) else None
    if endpoint == "v1_responses":
        return _positive(payload.get("max_output_tokens"))
    limit = _positive(payload.get("max_tokens"))
    if limit is None and endpoint == "v1_chat":
        limit = _positive(payload.get("max_completion_tokens"))
    return limit


def _structured(endpoint: str, payload: dict[str, Any]) -> bool:
    if endpoint in _NATIVE:
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


# ---------------------------------------------------------------------------------------------
# Messages-style requests


def _messages_profile(
    endpoint: str,
    payload: dict[str, Any],
    model: str,
    stream: bool,
    runner_options: tuple[tuple[str, object], ...],
) -> RequestProfile:
    messages = _normalised_messages(endpoint, payload)
    keys: list[tuple[bytes, int]] = []
    previous = _MESSAGES_SEED
    chars = images = count = 0
    system_texts: list[str] = []
    last_user = ""
    for role, key_text, plain, text_chars, message_images in messages:
        count += 1
        chars += text_chars
        images += message_images
        role_bytes = _ROLE_BYTES.get(role) or _encode(role)
        previous = blake2b(
            b"".join((previous, role_bytes, b"\0", _encode(key_text))), digest_size=16
        ).digest()
        keys.append((previous, (chars + 3) // 4 + 4 * count + IMAGE_TOKENS * images))
        if role == "user":
            last_user = plain
        elif role in _SYSTEM_ROLES:
            system_texts.append(plain)

    prompt_tokens = keys[-1][1] if keys else 0
    max_output = _max_output(endpoint, payload)
    system_texts.append(last_user)
    task = _task(system_texts, _structured(endpoint, payload), "chat")
    return RequestProfile(
        endpoint=endpoint,
        model=model,
        runner_options=runner_options,
        prompt_tokens=prompt_tokens,
        depth=count,
        max_output=max_output,
        images=images,
        task=task,
        complexity=_complexity(prompt_tokens, max_output, task),
        prefix_keys=tuple(keys),
        stream=stream,
    )


# ---------------------------------------------------------------------------------------------
# Prompt-style and embedding requests


def _prompt_profile(
    endpoint: str,
    payload: dict[str, Any],
    model: str,
    stream: bool,
    runner_options: tuple[tuple[str, object], ...],
) -> RequestProfile:
    system = payload.get("system") if endpoint == "generate" else None
    system = system if isinstance(system, str) else ""
    prompt = payload.get("prompt")
    prompt = prompt if isinstance(prompt, str) else ""
    suffix = payload.get("suffix")
    suffix = suffix if isinstance(suffix, str) else ""
    raw_images = payload.get("images") if endpoint == "generate" else None
    markers = [_image_marker(image) for image in raw_images] if isinstance(raw_images, list) else []

    chars = len(system) + len(prompt) + len(suffix)
    prompt_tokens = (chars + 3) // 4 + IMAGE_TOKENS * len(markers)
    keys = _prompt_keys(system, prompt, suffix, markers, prompt_tokens)
    max_output = _max_output(endpoint, payload)
    task = _task([system, prompt], _structured(endpoint, payload), "generation")
    return RequestProfile(
        endpoint=endpoint,
        model=model,
        runner_options=runner_options,
        prompt_tokens=prompt_tokens,
        depth=0,
        max_output=max_output,
        images=len(markers),
        task=task,
        complexity=_complexity(prompt_tokens, max_output, task),
        prefix_keys=keys,
        stream=stream,
    )


def _embedding_tokens(payload: dict[str, Any], endpoint: str) -> int:
    value = payload.get("prompt") if endpoint == "embeddings" else payload.get("input")
    if isinstance(value, str):
        return (len(value) + 3) // 4
    if not isinstance(value, list):
        return 0
    chars = tokens = 0
    for item in value:
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, list):
            tokens += len(item)  # /v1 accepts pre-tokenised inputs
        elif isinstance(item, int):
            tokens += 1
    return (chars + 3) // 4 + tokens
