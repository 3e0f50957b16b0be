"""What the proxy may do with an embedding call: read its inputs and rebuild its body for a part
of them. A call it cannot read exactly as Ollama would is not touched (forwarded as it is).

Ollama decodes the body into a Go struct, matching JSON keys to its fields case-insensitively
(reference 1.3) and checking `input` itself (a string, or a list of strings, else `400 invalid
input type`). The proxy only cuts or merges a call whose keys are spelled exactly like the
fields and whose `input` is text, so that every part means what the whole did; anything else
(tokens, wrong types, odd spellings, a compressed body) goes whole to one node, which gives
Ollama's own answer, errors included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sollol_proxy.wire import gojson

API_EMBED = "/api/embed"
V1_EMBEDDINGS = "/v1/embeddings"

# The fields each route's Go struct decodes (api.EmbedRequest, openai.EmbedRequest).
_FIELDS = {
    API_EMBED: frozenset({"model", "input", "truncate", "dimensions", "keep_alive", "options"}),
    V1_EMBEDDINGS: frozenset({"model", "input", "dimensions", "encoding_format"}),
}


@dataclass(frozen=True)
class EmbedCall:
    """An embedding call whose inputs the proxy may send in parts."""

    path: str
    model: str
    inputs: tuple[str, ...]
    payload: Mapping[str, Any]  # the client's fields, in the client's order
    key: bytes  # calls with the same key (route, model, every other field) may share a call
    raw: bytes = b""  # the client's own body

    def body(self, inputs: Sequence[str]) -> bytes:
        """The call's body with only `inputs`: every other field as the client sent it (the
        client's very bytes when `inputs` are all of its inputs)."""
        if self.raw and tuple(inputs) == self.inputs:
            return self.raw
        fields = dict(self.payload)
        fields["input"] = list(inputs)
        return gojson.dumps(fields)


def read_call(
    path: str, payload: Mapping[str, Any] | None, encoding: str, raw: bytes = b""
) -> EmbedCall | None:
    """The call, when its inputs can be sent in parts; None: forward it untouched."""
    fields = _FIELDS.get(path)
    if fields is None or payload is None or encoding.strip().lower() not in ("", "identity"):
        return None
    folded = {f.casefold() for f in fields}
    if any(k not in fields and k.casefold() in folded for k in payload):
        return None  # Go would read this key as one of its fields: leave the call to a node
    model, given = payload.get("model"), payload.get("input")
    if not isinstance(model, str) or not model.strip():
        return None
    if isinstance(given, str):
        inputs: tuple[str, ...] = (given,) if given else ()
    elif isinstance(given, list) and all(isinstance(item, str) for item in given):
        inputs = tuple(given)
    else:
        return None
    if not inputs:
        return None  # an empty input only loads the model: nothing to share
    rest = {k: v for k, v in payload.items() if k != "input"}
    key = path.encode() + b" " + orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)
    return EmbedCall(path, model, inputs, payload, key, raw)
