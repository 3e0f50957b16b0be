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

from sollol_proxy.routing.options import (
    NATIVE,
    RUNNER_OPTIONS,
    load_options,
    output_limit,
    structured,
)
from sollol_proxy.routing.prefixes import (
    _MESSAGES_SEED,
    _ROLE_BYTES,
    PROMPT_BLOCK_CHARS,
    _encode,
    _image_marker,
    _normalised_messages,
    _prompt_keys,
)
from sollol_proxy.routing.tasks import (
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
_SYSTEM_ROLES: Final = frozenset({"system", "developer"})


def analyze(path: str, payload: dict[str, Any] | None, model: str, stream: bool) -> RequestProfile:
    endpoint = _ENDPOINT_BY_PATH.get(path)
    if endpoint is None:
        endpoint = _ENDPOINT_BY_PATH.get(path.rstrip("/"), "other")
    if not isinstance(payload, dict):
        return _empty(endpoint, model, stream)

    runner_options: tuple[tuple[str, object], ...] = ()
    if endpoint in NATIVE:
        options = payload.get("options")
        if isinstance(options, dict) and options:
            runner_options = load_options(options)

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
    max_output = output_limit(endpoint, payload)
    system_texts.append(last_user)
    task = _task(system_texts, structured(endpoint, payload), "chat")
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
    max_output = output_limit(endpoint, payload)
    task = _task([system, prompt], structured(endpoint, payload), "generation")
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
