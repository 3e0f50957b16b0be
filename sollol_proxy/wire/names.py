"""Ollama model names, compared the way Ollama resolves them."""

from __future__ import annotations

import functools

_DEFAULT_PREFIXES = ("registry.ollama.ai/library/", "registry.ollama.ai/")


# Names seen are few (the fleet's models), and a request normalises its model a few times: the
# answers are remembered, for at most MEMO_SIZE names of at most MEMO_LENGTH characters (a
# hostile client can send any number of names, of any length: the least recently used is
# forgotten first, and a longer name is worked out each time, so the memo stays under ~3 MB).
MEMO_SIZE = 4096
MEMO_LENGTH = 256


def normalize_model(name: str) -> str:
    """`llama3.2` and `registry.ollama.ai/library/llama3.2:latest` both become `llama3.2:latest`.

    Ollama names are case-insensitive and default to the `latest` tag; the `:local` routing
    suffix (reference 2.1) names the same local model.
    """
    return _remembered(name) if len(name) <= MEMO_LENGTH else _normalize(name)


def _normalize(name: str) -> str:
    text = name.strip().lower()
    if text.endswith(":local"):
        text = text[: -len(":local")]
    for prefix in _DEFAULT_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    last_segment = text.rsplit("/", 1)[-1]
    if text and ":" not in last_segment:
        text += ":latest"
    return text


_remembered = functools.lru_cache(maxsize=MEMO_SIZE)(_normalize)


def remembered() -> int:
    """How many names the memo holds now."""
    return _remembered.cache_info().currsize
