"""Reading the embeddings out of a node's answer and writing one answer from several, in the
exact shape one node gives (reference 3.14 `/api/embed`, 3.17 `/v1/embeddings`).

Vectors are never re-encoded: each one is the byte span the node wrote (Go's float32 digits,
or the base64 string of `encoding_format: base64`), so a merged answer carries the very bytes
the nodes produced. Only the counters and durations are new numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from sollol_proxy.embed.inputs import V1_EMBEDDINGS

_WS = b" \t\r\n"
_NUMBERS = re.compile(rb"\[[-+0-9.eE,\s]*\]")  # a float vector: no strings, no nesting


class BadAnswer(ValueError):
    """A 200 answer that is not the embedding answer the request asked for."""


@dataclass(frozen=True)
class Answer:
    model: bytes  # the JSON string of `model`, as the node wrote it
    vectors: list[bytes]  # each embedding's JSON, as the node wrote it, in input order
    load_ns: int
    prompt_tokens: int


def _skip(body: bytes, i: int) -> int:
    while i < len(body) and body[i] in _WS:
        i += 1
    return i


def _string_end(body: bytes, i: int) -> int:
    """The end of the JSON string starting at `i` (its opening quote)."""
    j = i + 1
    while True:
        j = body.index(b'"', j)
        backslashes = 0
        while body[j - 1 - backslashes] == 0x5C:
            backslashes += 1
        if backslashes % 2 == 0:
            return j + 1
        j += 1


def _value_end(body: bytes, i: int) -> int:
    """The end of the JSON value starting at `i`."""
    first = body[i : i + 1]
    if first == b'"':
        return _string_end(body, i)
    if first == b"[":
        inner = _skip(body, i + 1)
        if body[inner : inner + 1] in (b"]", b"-") or body[inner : inner + 1].isdigit():
            end = body.index(b"]", inner) + 1  # numbers only: the first ] closes it
            if not _NUMBERS.fullmatch(body, i, end):
                raise BadAnswer("not a list of numbers")
            return end
        return _array(body, i)[1]
    if first == b"{":
        return _object(body, i)[1]
    j = i
    while j < len(body) and body[j] not in b",]}" and body[j] not in _WS:
        j += 1
    return j


def _array(body: bytes, i: int) -> tuple[list[tuple[int, int]], int]:
    """The (start, end) of each element of the JSON array at `i`, and the array's end."""
    spans: list[tuple[int, int]] = []
    j = _skip(body, i + 1)
    if body[j : j + 1] == b"]":
        return spans, j + 1
    while True:
        end = _value_end(body, j)
        spans.append((j, end))
        j = _skip(body, end)
        if body[j : j + 1] == b"]":
            return spans, j + 1
        if body[j : j + 1] != b",":
            raise BadAnswer("malformed array")
        j = _skip(body, j + 1)


def _object(body: bytes, i: int) -> tuple[list[tuple[str, int, int]], int]:
    """The (key, value start, value end) of each member of the JSON object at `i`, and the
    object's end."""
    members: list[tuple[str, int, int]] = []
    j = _skip(body, i + 1)
    if body[j : j + 1] == b"}":
        return members, j + 1
    while True:
        if body[j : j + 1] != b'"':
            raise BadAnswer("malformed object")
        key_end = _string_end(body, j)
        key = orjson.loads(body[j:key_end])
        j = _skip(body, key_end)
        if body[j : j + 1] != b":":
            raise BadAnswer("malformed object")
        start = _skip(body, j + 1)
        end = _value_end(body, start)
        members.append((key, start, end))
        j = _skip(body, end)
        if body[j : j + 1] == b"}":
            return members, j + 1
        if body[j : j + 1] != b",":
            raise BadAnswer("malformed object")
        j = _skip(body, j + 1)


def _integer(raw: bytes) -> int:
    value = orjson.loads(raw)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadAnswer(f"not an integer: {raw[:40]!r}")
    return value


def read_answer(path: str, body: bytes) -> Answer:
    """The embeddings and counters of a node's 200 answer on `path`."""
    try:
        return _read(path, body)
    except (ValueError, IndexError) as exc:  # orjson's errors are ValueErrors
        raise BadAnswer(f"unreadable embedding answer: {exc}") from None


def _read(path: str, body: bytes) -> Answer:
    start = _skip(body, 0)
    if body[start : start + 1] != b"{":
        raise BadAnswer("not a JSON object")
    model = b""
    vectors: list[bytes] = []
    load = tokens = 0
    for key, i, end in _object(body, start)[0]:
        if key == "model":
            model = body[i:end]
        elif key == "embeddings" and path != V1_EMBEDDINGS:
            vectors = [body[a:b] for a, b in _array(body, i)[0]]
        elif key == "data" and path == V1_EMBEDDINGS:
            vectors = [_v1_vector(body, a) for a, _ in _array(body, i)[0]]
        elif key == "load_duration":
            load = _integer(body[i:end])
        elif key == "prompt_eval_count":
            tokens = _integer(body[i:end])
        elif key == "usage":
            for name, a, b in _object(body, i)[0]:
                if name == "prompt_tokens":
                    tokens = _integer(body[a:b])
    if not model.startswith(b'"'):
        raise BadAnswer("no model in the answer")
    return Answer(model, vectors, load, tokens)


def _v1_vector(body: bytes, i: int) -> bytes:
    for key, a, b in _object(body, i)[0]:
        if key == "embedding":
            return body[a:b]
    raise BadAnswer("a data item without an embedding")


def merged(
    path: str, model: bytes, vectors: Sequence[bytes], total_ns: int, load_ns: int, tokens: int
) -> bytes:
    """One answer for all `vectors`, as one node writes it for that many inputs: Go field
    order, `omitempty` durations on /api/embed, `index` renumbered and `\\n` ended on /v1."""
    if path == V1_EMBEDDINGS:
        items = b",".join(
            b'{"object":"embedding","embedding":%s,"index":%d}' % (vector, index)
            for index, vector in enumerate(vectors)
        )
        return (
            b'{"object":"list","data":[%s],"model":%s,"usage":{"prompt_tokens":%d,"total_tokens":%d}}\n'
            % (
                items,
                model,
                tokens,
                tokens,
            )
        )
    parts = [b'"model":' + model, b'"embeddings":[' + b",".join(vectors) + b"]"]
    for name, value in (
        (b"total_duration", total_ns),
        (b"load_duration", load_ns),
        (b"prompt_eval_count", tokens),
    ):
        if value:  # omitempty
            parts.append(b'"%s":%d' % (name, value))
    return b"{" + b",".join(parts) + b"}"


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """`total` cut in parts proportional to `weights` that add up to it (largest remainder)."""
    weights = [max(w, 1) for w in weights]
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    parts = [int(x) for x in exact]
    by_remainder = sorted(range(len(parts)), key=lambda k: exact[k] - parts[k], reverse=True)
    for k in by_remainder[: total - sum(parts)]:
        parts[k] += 1
    return parts
