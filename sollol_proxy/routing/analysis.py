"""What a request asks for, read in one cheap pass over its already-parsed JSON body.

`analyze()` runs on every proxied request, so it is pure, synchronous and allocation-light: it never
serialises anything, it touches each string once (length, UTF-8 encoding for the hash, and the
task rules below), and image payloads are sampled instead of read in full.

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

Prefix keys
-----------
Ollama / llama-server reuse a slot's KV cache for a matching prompt *prefix* on the same node and
model (reference 5.7). ``prefix_keys`` lists ``(key, cumulative_tokens)`` for every prefix at which
such a match is meaningful, shortest first. Keys are 16-byte BLAKE2b digests, chained so that a key
depends on the whole prefix and is identical across processes and runs. No model-specific data
goes in; the caller pairs keys with the model.

* Messages-style (``/api/chat``, ``/v1/chat/completions``, ``/v1/messages``, ``/v1/responses``):
  one key per message, ``key_i = blake2b(key_{i-1} + role + b"\\0" + content_text)``. A top-level
  ``system`` (/v1/messages) or ``instructions`` (/v1/responses) is a first message with role
  ``system``; a string ``input`` on /v1/responses is one user message. ``content_text`` is the
  string content, or the part texts and one marker per image joined by ``"\\0"`` (so a single text
  part hashes like the plain string). An image marker samples the base64 data (length plus three
  32-character windows, after any ``data:`` URL header), so the same image gives the same marker
  natively and through /v1. Tool-call objects on messages are not hashed (serialising them would
  cost more than the affinity is worth; the tool results that follow them are hashed).
* Prompt-style (``/api/generate``, ``/v1/completions``): the text is ``system + "\\0" + prompt``;
  a key at every 1024-character boundary, then one for the full request (the remaining text plus
  ``suffix`` and image markers). Two prompts sharing a long preamble share its block keys.
* Embeddings and other routes: no keys.

Task table (first matching row wins)
------------------------------------
Embedding routes are always ``embedding``. Otherwise the rules look at the lower-cased system prompt
(``system`` field, ``system``/``developer`` messages, ``instructions``) plus the last user message,
or the system prompt plus ``prompt`` for prompt-style requests. Words match on word boundaries, so
"decode" is not "code". Each text is scanned only in its first and last 2,000 characters: the scan
costs far more per character than hashing, and instructions sit at the start of a system prompt or
at either end of a pasted document. The result is a routing hint, not a classifier.

==================  =======================================================================
task                matches
==================  =======================================================================
code                a triple-backtick fence; code, coding, function, python, javascript,
                    typescript, sql, regex, bug, debug, stack trace, traceback, compile,
                    refactor, implement, unit test (and their plural/inflected forms)
summarization       summarize/summarise, summary, tl;dr, condense, key points
extraction          extract, pull out, list all, parse, fill in the json; or structured
                    output requested: native ``format``, /v1 ``response_format`` other than
                    ``text``, /v1/responses ``text.format`` other than ``text``
classification      classify, categorize/categorise, which category, sentiment, label this,
                    is this spam, yes or no
analysis            analyze/analyse, analysis, compare, evaluate, assess, pros and cons,
                    explain why, reason about
chat / generation   anything else: ``chat`` for messages-style routes, ``generation`` for
                    prompt-style and other routes
==================  =======================================================================

Complexity
----------
* ``high``: ``prompt_tokens > 4000``, or ``max_output > 1024``, or a ``code``/``analysis`` task
  with ``prompt_tokens > 1000``.
* ``low``: ``prompt_tokens < 300`` and ``max_output`` unspecified or ``<= 256`` and the task is
  classification, extraction, embedding, chat or generation.
* ``medium``: everything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from hashlib import blake2b
from typing import Any, Final

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

PROMPT_BLOCK_CHARS: Final = 1024
HIGH_PROMPT_TOKENS: Final = 4000
HIGH_OUTPUT_TOKENS: Final = 1024
HIGH_REASONING_PROMPT_TOKENS: Final = 1000
LOW_PROMPT_TOKENS: Final = 300
LOW_OUTPUT_TOKENS: Final = 256


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

# Versioned seeds: changing how keys are built must change the seed too, so that a proxy running
# old and new code side by side never confuses two different prefixes.
_MESSAGES_SEED: Final = blake2b(b"sollol-proxy/prefix/messages/v1", digest_size=16).digest()
_PROMPT_SEED: Final = blake2b(b"sollol-proxy/prefix/prompt/v1", digest_size=16).digest()
# Ollama lower-cases roles on input; the common ones skip the lower() and encode() calls.
_ROLE_BYTES: Final[dict[str, bytes]] = {
    role: role.encode() for role in ("system", "developer", "user", "assistant", "tool")
}
_SYSTEM_ROLES: Final = frozenset({"system", "developer"})

_TEXT_PARTS: Final = frozenset({"text", "input_text", "output_text"})
_IMAGE_PARTS: Final = frozenset({"image_url", "input_image", "image"})
_IMAGE_SAMPLE: Final = 32


# Each task's words, highest priority first. Python's `re` costs ~25 ns per character and
# pattern, so all rules are one pattern scanned once; the named group of a match tells its task.
_TASK_WORDS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (
        "code",
        (
            r"code[sd]?",
            r"coding",
            r"functions?",
            r"python",
            r"javascript",
            r"typescript",
            r"sql",
            r"regex(?:es|p)?",
            r"bugs?",
            r"debug(?:s|ged|ging)?",
            r"stack ?traces?",
            r"traceback",
            r"compil(?:e[sd]?|er|ing|ation)",
            r"refactor(?:s|ed|ing)?",
            r"implement(?:s|ed|ing|ation)?",
            r"unit ?tests?",
        ),
    ),
    (
        "summarization",
        (
            r"summari[sz](?:e[sd]?|ing|ation)",
            r"summary",
            r"summaries",
            r"tl;?dr",
            r"condense[sd]?",
            r"key points",
        ),
    ),
    (
        "extraction",
        (
            r"extract(?:s|ed|ing|ion)?",
            r"pull out",
            r"list all",
            r"pars(?:e[sd]?|ing)",
            r"fill in the json",
        ),
    ),
    (
        "classification",
        (
            r"classif(?:y|ies|ied|ying|ication)",
            r"categori[sz](?:e[sd]?|ing|ation)",
            r"which category",
            r"sentiment",
            r"label this",
            r"is this spam",
            r"yes or no",
        ),
    ),
    (
        "analysis",
        (
            r"analy[sz](?:e[sd]?|ing)",
            r"analysis",
            r"compar(?:e[sd]?|ing|ison)",
            r"evaluat(?:e[sd]?|ing|ion)",
            r"assess(?:es|ed|ing|ment)?",
            r"pros and cons",
            r"explain why",
            r"reason about",
        ),
    ),
)
_TASK_NAMES: Final = tuple(task for task, _ in _TASK_WORDS)
_TASK_FULL: Final = tuple(re.compile("|".join(words)) for _, words in _TASK_WORDS)


def _first_letter_trie(words: list[str]) -> str:
    # Python's `re` tries alternatives one by one at every word start; grouping them by first
    # letter makes most attempts a single failed character test (about 2x faster).
    by_letter: dict[str, list[str]] = {}
    for word in words:
        by_letter.setdefault(word[0], []).append(word[1:])
    return "|".join(f"{letter}(?:{'|'.join(rests)})" for letter, rests in by_letter.items())


_TASK_PATTERN: Final = re.compile(
    r"\b(?:" + _first_letter_trie([w for _, words in _TASK_WORDS for w in words]) + r")\b"
)


@cache
def _task_rank(word: str) -> int:
    # Cached without a bound on purpose: the argument is always a match of _TASK_PATTERN, a
    # finite language of a few hundred strings.
    for rank, pattern in enumerate(_TASK_FULL):
        if pattern.fullmatch(word):
            return rank
    return len(_TASK_NAMES)  # unreachable: every alternative of _TASK_PATTERN is in _TASK_FULL


# Only the head and tail of each text are scanned: the scan is far slower than hashing, and an
# instruction sits at the start of a system prompt or at either end of a pasted document.
_TASK_CLIP: Final = 2000
_EXTRACTION_RANK: Final = _TASK_NAMES.index("extraction")
_REASONING_TASKS: Final = frozenset({"code", "analysis"})
_LIGHT_TASKS: Final = frozenset({"classification", "extraction", "embedding", "chat", "generation"})

# One normalised message: role, text to hash, text for the task rules, text chars, images.
_Message = tuple[str, str, str, int, int]


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


def _complexity(prompt_tokens: int, max_output: int | None, task: str) -> str:
    if (
        prompt_tokens > HIGH_PROMPT_TOKENS
        or (max_output is not None and max_output > HIGH_OUTPUT_TOKENS)
        or (task in _REASONING_TASKS and prompt_tokens > HIGH_REASONING_PROMPT_TOKENS)
    ):
        return "high"
    if (
        prompt_tokens < LOW_PROMPT_TOKENS
        and (max_output is None or max_output <= LOW_OUTPUT_TOKENS)
        and task in _LIGHT_TASKS
    ):
        return "low"
    return "medium"


def _task(texts: list[str], structured: bool, default: str) -> str:
    text = "\n".join(_clip(text) for text in texts if text).lower()
    if "```" in text:
        return "code"
    best = len(_TASK_NAMES)
    for match in _TASK_PATTERN.finditer(text):
        rank = _task_rank(match.group())
        if rank < best:
            best = rank
            if rank == 0:
                break
    if structured and best > _EXTRACTION_RANK:
        best = _EXTRACTION_RANK
    return _TASK_NAMES[best] if best < len(_TASK_NAMES) else default


def _clip(text: str) -> str:
    if len(text) <= 2 * _TASK_CLIP:
        return text
    return f"{text[:_TASK_CLIP]}\n{text[-_TASK_CLIP:]}"


def _encode(text: str) -> bytes:
    try:
        # Without an error handler argument: that alone makes encode() three times slower.
        return text.encode()
    except UnicodeEncodeError:
        # Lone surrogates survive Python's json module; hashing must not raise on them.
        return text.encode("utf-8", "surrogatepass")


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


def _normalised_messages(endpoint: str, payload: dict[str, Any]) -> list[_Message]:
    out: list[_Message] = []
    if endpoint == "v1_messages":
        system = payload.get("system")
        if system and isinstance(system, str | list):
            out.append(_message("system", system, None))
        items = payload.get("messages")
    elif endpoint == "v1_responses":
        instructions = payload.get("instructions")
        if instructions and isinstance(instructions, str | list):
            out.append(_message("system", instructions, None))
        items = payload.get("input")
        if isinstance(items, str):
            out.append(_message("user", items, None))
            return out
    else:
        items = payload.get("messages")
    if not isinstance(items, list):
        return out

    for item in items:
        if not isinstance(item, dict):
            continue
        role = item.get("role")
        if isinstance(role, str):
            if role not in _ROLE_BYTES:
                role = role.lower()
            content = item.get("content")
            # The common case inline: a call per message is a tenth of the whole budget.
            if type(content) is str and not item.get("images"):
                out.append((role, content, content, len(content), 0))
            else:
                out.append(_message(role, content, item.get("images")))
            continue
        # /v1/responses items that are not messages.
        kind = item.get("type")
        if kind == "function_call":
            name, arguments = item.get("name"), item.get("arguments")
            text = "\0".join(s for s in (name, arguments) if isinstance(s, str))
            out.append(("assistant", text, text, len(text), 0))
        elif kind == "function_call_output":
            output = item.get("output")
            out.append(_message("tool", output, None))
    return out


def _message(role: str, content: object, native_images: object) -> _Message:
    if isinstance(content, str):
        key_text, plain, chars, images = content, content, len(content), 0
    elif isinstance(content, list):
        key_text, plain, chars, images = _parts(content, nested=False)
    else:
        key_text, plain, chars, images = "", "", 0, 0
    if native_images and isinstance(native_images, list):
        markers = [_image_marker(image) for image in native_images]
        key_text = "\0".join((key_text, *markers))
        images += len(markers)
    return role, key_text, plain, chars, images


def _parts(parts: list[Any], nested: bool) -> tuple[str, str, int, int]:
    """Content parts (/v1 chat, /v1/messages, /v1/responses): hash text, plain text, chars, images."""
    pieces: list[str] = []
    texts: list[str] = []
    chars = images = 0
    for part in parts:
        if isinstance(part, str):
            text: object = part
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind in _TEXT_PARTS:
                text = part.get("text")
            elif kind in _IMAGE_PARTS:
                images += 1
                source = part.get("source") if kind == "image" else part.get("image_url")
                pieces.append(_image_marker(source if source is not None else part.get("file_id")))
                continue
            elif kind == "tool_result" and not nested:
                # Anthropic tool results carry their own content; one level deep is all it nests.
                inner = part.get("content")
                if isinstance(inner, list):
                    key_text, plain, inner_chars, inner_images = _parts(inner, nested=True)
                    pieces.append(key_text)
                    texts.append(plain)
                    chars += inner_chars
                    images += inner_images
                    continue
                text = inner
            elif kind == "tool_use":
                text = part.get("name")
            else:
                continue
        else:
            continue
        if isinstance(text, str):
            pieces.append(text)
            texts.append(text)
            chars += len(text)
    return "\0".join(pieces), "\n".join(texts), chars, images


def _image_marker(image: object) -> str:
    """A stable stand-in for an image: its size and three samples, not the whole payload."""
    if isinstance(image, dict):
        # OpenAI {"url": ...}; Anthropic {"type": "base64", "data": ...} or {"type": "url", "url": ...}
        image = image.get("data") or image.get("url")
    if not isinstance(image, str):
        return "\x01image"
    start = 0
    if image.startswith("data:"):
        # Skip the media-type header so the same image hashes alike natively and through /v1.
        comma = image.find(",", 5, 256)
        if comma >= 0:
            start = comma + 1
    size = len(image) - start
    middle = start + size // 2
    # Offsets instead of slicing off the header: an image may be megabytes and must not be copied.
    return (
        f"\x01image:{size}:{image[start : start + _IMAGE_SAMPLE]}"
        f"{image[middle : middle + _IMAGE_SAMPLE]}{image[max(start, len(image) - _IMAGE_SAMPLE) :]}"
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


def _prompt_keys(
    system: str, prompt: str, suffix: str, markers: list[str], prompt_tokens: int
) -> tuple[tuple[bytes, int], ...]:
    if not (system or prompt or suffix or markers):
        return ()  # a load or unload request: nothing gets cached
    text = f"{system}\0{prompt}"
    separator = len(system)  # the "\0" is not prompt text and is left out of the token count
    keys: list[tuple[bytes, int]] = []
    previous = _PROMPT_SEED
    end = PROMPT_BLOCK_CHARS
    while end <= len(text):
        block = _encode(text[end - PROMPT_BLOCK_CHARS : end])
        previous = blake2b(previous + block, digest_size=16).digest()
        chars = end - 1 if end > separator else end
        keys.append((previous, (chars + 3) // 4))
        end += PROMPT_BLOCK_CHARS
    start = end - PROMPT_BLOCK_CHARS
    if start < len(text) or suffix or markers:
        tail = [text[start:]]
        if suffix:
            tail.append("\0suffix\0" + suffix)
        tail.extend(markers)
        previous = blake2b(previous + _encode("".join(tail)), digest_size=16).digest()
        keys.append((previous, prompt_tokens))
    return tuple(keys)


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
