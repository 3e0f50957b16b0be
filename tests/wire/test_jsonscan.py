"""The body peek reads what Go's decoder reads, at a bounded cost: jsonscan, peek, logsafe, usage."""

from __future__ import annotations

import gzip
import random
import tracemalloc

import orjson
import pytest

from sollol_proxy.wire.jsonscan import MAX_DEPTH, TooComplex, TooDeep, go_field_match, members
from sollol_proxy.wire.logsafe import loggable
from sollol_proxy.wire.peek import (
    INLINE_BYTES,
    MAX_SCAN_TOKENS,
    BodyTooComplex,
    BodyTooLarge,
    peek,
    read_object,
)
from sollol_proxy.wire.routes import classify
from sollol_proxy.wire.usage import usage_counts

CHAT = classify("POST", "/api/chat")[0]
SHOW = classify("POST", "/api/show")[0]


def keys(body: bytes) -> list[str] | None:
    found = members(body, 10**6)
    return None if found is None else [m.key for m in found]


def test_members_in_order_with_duplicates_and_trailing_bytes_ignored() -> None:
    body = b' {"model":"a","x":[1,{"y":"}]"}],"e":"q\\"uote","model":"b","n":null} trailing'
    found = members(body, 100)
    assert found is not None
    assert [m.key for m in found] == ["model", "x", "e", "model", "n"]
    assert [body[m.start : m.end] for m in found] == [
        b'"a"',
        b'[1,{"y":"}]"}]',
        b'"q\\"uote"',
        b'"b"',
        b"null",
    ]
    assert keys(b'{"mod\\u0065l":1}') == ["model"]  # keys are unescaped, as Go matches them
    assert keys(b"{}") == []


@pytest.mark.parametrize(
    "body", [b"[1]", b'"s"', b"", b'{"a":1,}', b'{"a" 1}', b'{"a":[1,2}', b'{"a":"open', b"{nope"]
)
def test_what_go_does_not_read_as_an_object(body: bytes) -> None:
    assert members(body, 100) is None


def test_depth_up_to_go_limit_and_go_error_beyond() -> None:
    deep = MAX_DEPTH - 1  # the top-level object is the first level
    body = b'{"model":"m","x":' + b"[" * deep + b"]" * deep + b"}"
    assert keys(body) == ["model", "x"]
    with pytest.raises(TooDeep, match=r"^invalid character '\{' exceeded max depth$"):
        members(b'{"x":' + b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH + b"}", 10**6)


def test_the_scan_stops_after_its_budget() -> None:
    body = b'{"x":[' + b"{}," * 1000 + b'{}],"model":"m"}'
    assert keys(body) == ["x", "model"]
    with pytest.raises(TooComplex):
        members(body, 500)


def test_numbers_and_long_strings_cost_little_to_walk() -> None:
    # Only strings and brackets count against the budget: a long array of numbers or a long
    # string is jumped over, not walked byte by byte in Python.
    numbers = b'{"context":[' + b"1," * 500_000 + b'1],"model":"m"}'
    assert keys(numbers[:]) == ["context", "model"]
    assert members(numbers, 10) is not None
    text = b'{"prompt":"' + b"a" * 5_000_000 + b'\\"b","model":"m"}'
    assert members(text, 10) is not None


def test_go_matches_field_names_case_insensitively() -> None:
    assert go_field_match("MODEL", "model") and go_field_match("Model", "model")
    assert go_field_match("\u017ftream", "stream")  # long s folds to s in Go
    assert not go_field_match("models", "model") and not go_field_match("mode\u0142", "model")


def test_peek_takes_the_last_matching_key_like_go() -> None:
    # The dict orjson builds loses the order of `model` and `MODEL`: the scan keeps it.
    assert peek(CHAT, b'{"model":"a","MODEL":"b","model":"c"}', {}).model == "c"
    assert peek(CHAT, b'{"MODEL":"b","model":"a"}', {}).model == "a"
    assert peek(CHAT, b'{"Model":"x","Stream":false}', {}).stream is False
    assert peek(SHOW, b'{"model":"","name":"n"}', {}).model == "n"  # cmp.Or(Model, Name)


def test_peek_finds_the_fields_go_finds_under_any_spelling_of_their_keys() -> None:
    # Keys spelt every way (case, Go's non-ASCII folds, near misses), in random orders: peek
    # reads the model and stream Go's field matching leaves, member by member.
    rng = random.Random(7)
    spellings = ["model", "MODEL", "mOdEl", "models", "mode", "name", "stream", "STREAM"]
    spellings += ["\u017ftream", "\u017fTREAM", "stre\u0430m", "n\u0430me", "Name"]
    for _ in range(300):
        members_ = [(rng.choice(spellings), rng.choice(["a", "b", True, False])) for _ in range(4)]
        body = (
            b"{" + b",".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in members_) + b"}"
        )
        model = stream = None
        for key, value in members_:
            if go_field_match(key, "model"):
                model = value
            if go_field_match(key, "stream"):
                stream = value
        seen = peek(CHAT, body, {})
        assert seen.model == (model if isinstance(model, str) else "")
        assert seen.stream is (stream if isinstance(stream, bool) else True)


def test_invalid_utf8_is_read_as_go_reads_it() -> None:
    body = b'{"model":"llama3.2","messages":[{"role":"user","content":"caf\xe9 \xff"}]}'
    seen = peek(CHAT, body, {})
    assert seen.model == "llama3.2"
    assert seen.payload is not None
    # One U+FFFD per invalid byte, as Go's utf8.DecodeRune (Python's "replace" would merge).
    assert seen.payload["messages"][0]["content"] == "caf\ufffd \ufffd"
    assert peek(CHAT, b'{"model":"m\xe2\x82"}', {}).model == "m\ufffd\ufffd"


def test_nesting_beyond_orjson_but_within_go_is_read() -> None:
    body = b'{"model":"llama3.2","x":' + b"[" * 2000 + b"]" * 2000 + b',"stream":false}'
    seen = peek(CHAT, body, {})
    assert (seen.model, seen.stream) == ("llama3.2", False)
    assert seen.payload == {"model": "llama3.2", "stream": False}  # x is too deep to build


def test_nesting_beyond_go_is_left_to_the_node() -> None:
    body = b'{"model":"llama3.2","x":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
    seen = peek(CHAT, body, {})
    assert seen.payload is None and seen.model == ""


def test_a_body_too_complex_to_read_is_refused() -> None:
    body = b'{"model":"m","x":[' + b"{}," * MAX_SCAN_TOKENS + b"{}]}"
    with pytest.raises(BodyTooComplex, match="more than 500000 JSON strings"):
        read_object(body)


def test_a_large_body_builds_only_cheap_members() -> None:
    # 300k tiny objects: more than the proxy builds, so the member is skipped, not built.
    body = b'{"model":"m","stream":true,"x":[' + b"{}," * 150_000 + b'{}],"options":{"a":1}}'
    assert len(body) > INLINE_BYTES
    tracemalloc.start()
    payload, _ = read_object(body)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert payload == {"model": "m", "stream": True, "options": {"a": 1}}
    assert peak < 5 * len(body)  # building it would take about 60 bytes per object


def test_compressed_bodies_are_inflated_up_to_the_limit_only() -> None:
    plain = b'{"model":"llama3.2","messages":[]}'
    assert peek(CHAT, gzip.compress(plain), {"Content-Encoding": "gzip"}).model == "llama3.2"
    bomb = gzip.compress(b'{"model":"m","p":"' + b"a" * 3_000_000 + b'"}')
    assert len(bomb) < 10_000
    with pytest.raises(BodyTooLarge, match="inflates to more than the proxy's limit of 1048576"):
        peek(CHAT, bomb, {"Content-Encoding": "gzip"}, limit=2**20)
    assert peek(CHAT, bomb, {"Content-Encoding": "gzip"}, limit=4 * 2**20).model == "m"


def test_loggable_escapes_and_truncates() -> None:
    assert loggable("a\nb\\c\u2028") == "a\\x0ab\\\\c\\u2028"
    long = loggable("x" * 5_000_000)
    assert len(long) < 300 and long.endswith("...(4999800 more characters)")


def test_usage_counts_of_v1_answers() -> None:
    chat = b'..."usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}\n'
    assert usage_counts(chat) == (12, 7)
    sse = b'data: {"type":"message_delta","usage":{"output_tokens":5}}\n\n'
    assert usage_counts(sse) == (0, 5)
    assert usage_counts(b'{"done":true}') is None
