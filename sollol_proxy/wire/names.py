"""Ollama model names, compared the way Ollama resolves them."""

from __future__ import annotations

_DEFAULT_PREFIXES = ("registry.ollama.ai/library/", "registry.ollama.ai/")


def normalize_model(name: str) -> str:
    """`llama3.2` and `registry.ollama.ai/library/llama3.2:latest` both become `llama3.2:latest`.

    Ollama names are case-insensitive and default to the `latest` tag; the `:local` routing
    suffix (reference 2.1) names the same local model.
    """
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
