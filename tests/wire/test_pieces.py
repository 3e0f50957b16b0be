"""The small wire-level pieces: Go-style JSON, model names, peeking, error shapes, headers."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from sollol_proxy.config import NodeConfig
from sollol_proxy.forward.views import timestamp_ns
from sollol_proxy.wire import gojson
from sollol_proxy.wire.errors import error_response, stream_error_bytes
from sollol_proxy.wire.headers import downstream_response_headers, upstream_request_headers
from sollol_proxy.wire.names import MEMO_LENGTH, MEMO_SIZE, normalize_model, remembered
from sollol_proxy.wire.peek import multipart_field, peek, read_object
from sollol_proxy.wire.routes import EXACT, Kind, classify


def test_gojson_escapes_like_go() -> None:
    assert gojson.dumps({"a": "<b>&\u2028\u2029\u0085é"}) == (
        b'{"a":"\\u003cb\\u003e\\u0026\\u2028\\u2029' + "\u0085é".encode() + b'"}'
    )
    assert gojson.dumps_line({"error": "x"}) == b'{"error":"x"}\n'


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("Llama3.2:Latest", "llama3.2:latest"),
        ("registry.ollama.ai/library/llama3.2:3b", "llama3.2:3b"),
        ("user/model", "user/model:latest"),
        ("host:5000/ns/model", "host:5000/ns/model:latest"),
        ("qwen2.5:7b:local", "qwen2.5:7b"),
    ],
)
def test_model_names_normalise_like_ollama(name: str, normal: str) -> None:
    assert normalize_model(name) == normal


def test_remembered_model_names_stay_bounded_under_a_flood_of_distinct_names() -> None:
    # A hostile client sends a new name with every request: the memo keeps at most MEMO_SIZE
    # of them, and never a name longer than MEMO_LENGTH, while answers stay right.
    for i in range(3 * MEMO_SIZE):
        assert normalize_model(f"Flood-{i}") == f"flood-{i}:latest"
    assert remembered() <= MEMO_SIZE
    long_name = "M" * (MEMO_LENGTH + 1)
    before = remembered()
    for _ in range(3):
        assert normalize_model(long_name) == "m" * (MEMO_LENGTH + 1) + ":latest"
    assert remembered() == before  # worked out each time, not kept
    assert normalize_model("Llama3.2") == normalize_model("llama3.2") == "llama3.2:latest"


def test_the_first_json_value_counts_and_trailing_bytes_are_ignored_like_go() -> None:
    assert read_object(b'{"model":"a"} trailing')[0] == {"model": "a"}
    assert read_object(b'  {"model":"a"}{"x":1}')[0] == {"model": "a"}
    assert read_object(b"{nope")[0] is None


def test_peek_finds_the_model_where_each_route_keeps_it() -> None:
    pull, _ = classify("POST", "/api/pull")
    assert (
        peek(
            pull, b'{"name":"llama3.2","stream":false}', {"Content-Type": "application/json"}
        ).model
        == "llama3.2"
    )
    copy, _ = classify("POST", "/api/copy")
    assert peek(copy, b'{"source":"a","destination":"b"}', {}).model == "a"
    route, param = classify("GET", "/v1/models/llama3.2:latest")
    assert route.kind is Kind.MODEL_PATH and peek(route, b"", {}, param).model == "llama3.2:latest"
    chat, _ = classify("POST", "/api/chat")
    seen = peek(chat, b'{"model":"m","messages":[]}', {})
    assert (seen.model, seen.stream, seen.payload) == ("m", True, {"model": "m", "messages": []})
    v1, _ = classify("POST", "/v1/chat/completions")
    assert peek(v1, b'{"model":"m"}', {}).stream is False
    assert peek(chat, b"not json", {}).payload is None


def test_multipart_model_field() -> None:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper:small\r\n--XyZ--\r\n'
    )
    assert multipart_field(body, "multipart/form-data; boundary=XyZ", "model") == "whisper:small"
    route, _ = classify("POST", "/v1/audio/transcriptions")
    assert (
        peek(route, body, {"Content-Type": "multipart/form-data; boundary=XyZ"}).model
        == "whisper:small"
    )


def test_unknown_paths_and_wrong_methods_are_forwarded_as_is() -> None:
    assert classify("GET", "/api/chat")[0].kind is Kind.ANY
    assert classify("POST", "/api/nope")[0].kind is Kind.ANY
    assert classify("GET", "/api/tags/")[0].kind is Kind.ANY
    assert classify("GET", "/v1/models/a/b")[0].kind is Kind.ANY
    assert classify("POST", "/api/blobs/sha256:abc")[0].kind is Kind.BLOB
    assert "/api/generate" in EXACT


def test_error_envelopes_per_api() -> None:
    api = error_response("/api/chat", 503, "no node")
    assert (api.body, api.headers["Content-Type"]) == (
        b'{"error":"no node"}',
        "application/json; charset=utf-8",
    )
    v1 = error_response("/v1/chat/completions", 404, "gone")
    assert v1.headers["Content-Type"] == "application/json"
    assert (
        v1.body
        == b'{"error":{"message":"gone","type":"not_found_error","param":null,"code":null}}\n'
    )
    anthropic = error_response("/v1/messages", 503, "busy")
    assert orjson.loads(anthropic.body) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "busy"},
    }


def test_stream_error_endings_close_partial_lines() -> None:
    assert (
        stream_error_bytes("/api/chat", "application/x-ndjson", "x", b"}\n") == b'{"error":"x"}\n'
    )
    assert (
        stream_error_bytes("/api/chat", "application/x-ndjson", "x", b'"a') == b'\n{"error":"x"}\n'
    )
    sse = stream_error_bytes("/v1/chat/completions", "text/event-stream", "x", b"}\n")
    assert sse.startswith(b'\ndata: {"error":{"message":"x"') and sse.endswith(b"\n\n")
    assert stream_error_bytes("/v1/messages", "text/event-stream", "x", b"\n\n").startswith(
        b"event: error\n"
    )
    assert stream_error_bytes("/api/show", "application/json", "x", b"") == b""


def test_hop_by_hop_headers_are_dropped_and_host_rewritten() -> None:
    incoming = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Host", "proxy.example.com"),
                ("Connection", "keep-alive, X-Trace"),
                ("X-Trace", "1"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Expect", "100-continue"),
                ("User-Agent", "ollama-python/0.6.3"),
                ("X-Sollol-Node", "a"),
                ("Content-Length", "10"),
                ("Authorization", "Bearer client"),
                ("Accept-Encoding", "gzip"),
            ]
        )
    )
    node = NodeConfig(url="http://10.0.0.2:11434", name="a", headers={"X-Node-Auth": "n"})
    out = upstream_request_headers(incoming, node, "192.0.2.7")
    assert out["Host"] == "10.0.0.2:11434"
    assert out["User-Agent"] == "ollama-python/0.6.3" and out["Authorization"] == "Bearer client"
    assert out["X-Forwarded-For"] == "192.0.2.7" and out["X-Node-Auth"] == "n"
    for gone in (
        "Connection",
        "X-Trace",
        "Keep-Alive",
        "TE",
        "Expect",
        "X-Sollol-Node",
        "Content-Length",
    ):
        assert gone not in out
    upstream = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Content-Type", "application/x-ndjson"),
                ("Transfer-Encoding", "chunked"),
                ("Date", "d"),
                ("Content-Length", "3"),
            ]
        )
    )
    assert dict(downstream_response_headers(upstream)) == {
        "Content-Type": "application/x-ndjson",
        "Date": "d",
    }


def test_go_timestamps_sort_with_nanoseconds_and_offsets() -> None:
    a = timestamp_ns("2025-05-04T17:37:44.706015396-07:00")
    b = timestamp_ns("2025-05-05T00:37:44.706015397Z")
    assert b - a == 1
    assert timestamp_ns("garbage") == 0 and timestamp_ns(None) == 0
