"""Prefix keys: stable hashes of a request's prompt prefixes, for prompt-cache affinity.

Used by `analysis.analyze()`, which also takes the token counts and task texts from the normalised
messages built here.

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
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Any, Final

PROMPT_BLOCK_CHARS: Final = 1024

# Versioned seeds: changing how keys are built must change the seed too, so that a proxy running
# old and new code side by side never confuses two different prefixes.
_MESSAGES_SEED: Final = blake2b(b"sollol-proxy/prefix/messages/v1", digest_size=16).digest()
_PROMPT_SEED: Final = blake2b(b"sollol-proxy/prefix/prompt/v1", digest_size=16).digest()
# Ollama lower-cases roles on input; the common ones skip the lower() and encode() calls.
_ROLE_BYTES: Final[dict[str, bytes]] = {
    role: role.encode() for role in ("system", "developer", "user", "assistant", "tool")
}

_TEXT_PARTS: Final = frozenset({"text", "input_text", "output_text"})
_IMAGE_PARTS: Final = frozenset({"image_url", "input_image", "image"})
_IMAGE_SAMPLE: Final = 32

# One normalised message: role, text to hash, text for the task rules, text chars, images.
_Message = tuple[str, str, str, int, int]


def _encode(text: str) -> bytes:
    try:
        # Without an error handler argument: that alone makes encode() three times slower.
        return text.encode()
    except UnicodeEncodeError:
        # Lone surrogates survive Python's json module; hashing must not raise on them.
        return text.encode("utf-8", "surrogatepass")


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
