"""Which embedding calls the proxy may cut or merge (pure): only what it reads exactly as
Ollama's Go structs would; the parts carry every other field."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sollol_proxy.embed.inputs import read_call


def test_a_call_with_text_inputs() -> None:
    raw = b'{"model":"m","input":["a","b"],"truncate":false,"options":{"num_ctx":512}}'
    call = read_call("/api/embed", orjson.loads(raw), "", raw)
    assert call is not None and call.inputs == ("a", "b")
    assert call.body(["a", "b"]) == raw  # all of it: the client's own bytes
    assert orjson.loads(call.body(["b"])) == {
        "model": "m",
        "input": ["b"],
        "truncate": False,
        "options": {"num_ctx": 512},
    }
    assert call.body(["<&>"]).count(b"\\u003c") == 1  # Go's escaping
    single = read_call("/v1/embeddings", {"model": "m", "input": "one"}, "identity")
    assert single is not None and single.inputs == ("one",)


def test_calls_with_the_same_fields_share_a_key() -> None:
    first = read_call("/api/embed", {"model": "m", "input": ["a"], "dimensions": 8}, "")
    second = read_call("/api/embed", {"dimensions": 8, "input": ["b", "c"], "model": "m"}, "")
    other = read_call("/api/embed", {"model": "m", "input": ["a"], "dimensions": 4}, "")
    v1 = read_call("/v1/embeddings", {"model": "m", "input": ["a"], "dimensions": 8}, "")
    assert first is not None and second is not None and other is not None and v1 is not None
    assert first.key == second.key != other.key != v1.key


@pytest.mark.parametrize(
    ("path", "payload", "encoding"),
    [
        ("/api/embeddings", {"model": "m", "prompt": "a"}, ""),
        ("/api/embed", None, ""),
        ("/api/embed", {"model": "m", "input": ["a"]}, "gzip"),
        ("/api/embed", {"model": "m", "Input": ["a"]}, ""),
        ("/api/embed", {"model": "m", "input": ["a"], "MODEL": "n"}, ""),
        ("/api/embed", {"model": "", "input": ["a"]}, ""),
        ("/api/embed", {"model": "m", "input": ["a", 1]}, ""),
        ("/api/embed", {"model": "m", "input": [[1, 2]]}, ""),
        ("/api/embed", {"model": "m", "input": ""}, ""),
        ("/api/embed", {"model": "m", "input": []}, ""),
        ("/api/embed", {"model": "m"}, ""),
    ],
)
def test_what_goes_whole_to_a_node(path: str, payload: Any, encoding: str) -> None:
    assert read_call(path, payload, encoding) is None
