"""Reading a node's embedding answer and writing one from several (pure): vectors as the
node's bytes, Go's field order and omitempty, /v1 indexes renumbered, counts shared out."""

from __future__ import annotations

import orjson
import pytest

from sollol_proxy.embed.merge import BadAnswer, apportion, merged, read_answer

API = b'{"model":"all-minilm","embeddings":[[0.010071029,-0.0017594862],[1e-07,0.5]],"total_duration":14143917,"load_duration":1019500,"prompt_eval_count":8}'
V1 = (
    b'{"object":"list","data":[{"object":"embedding","embedding":"AAAAPw==","index":0},'
    b'{"object":"embedding","embedding":[0.25, -1.5e-05],"index":1}],"model":"m\\"<x>",'
    b'"usage":{"prompt_tokens":3,"total_tokens":3}}\n'
)


def test_an_api_answer_is_read_as_the_nodes_bytes() -> None:
    answer = read_answer("/api/embed", API)
    assert answer.model == b'"all-minilm"'
    assert answer.vectors == [b"[0.010071029,-0.0017594862]", b"[1e-07,0.5]"]
    assert (answer.load_ns, answer.prompt_tokens) == (1019500, 8)


def test_a_v1_answer_keeps_base64_and_odd_spacing_as_written() -> None:
    answer = read_answer("/v1/embeddings", V1)
    assert answer.model == b'"m\\"<x>"'
    assert answer.vectors == [b'"AAAAPw=="', b"[0.25, -1.5e-05]"]
    assert answer.prompt_tokens == 3


def test_merged_answers_have_one_nodes_shape() -> None:
    vectors = [b"[1,2]", b"[3,4]", b"[5,6]"]
    body = merged("/api/embed", b'"x"', vectors, 99, 0, 12)
    assert (
        body
        == b'{"model":"x","embeddings":[[1,2],[3,4],[5,6]],"total_duration":99,"prompt_eval_count":12}'
    )
    v1 = merged("/v1/embeddings", b'"x"', vectors[:2], 99, 7, 5)
    assert v1.endswith(b"}\n")
    assert orjson.loads(v1) == {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": [1, 2], "index": 0},
            {"object": "embedding", "embedding": [3, 4], "index": 1},
        ],
        "model": "x",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[1]",
        b'{"embeddings":[[1]]}',  # no model
        b'{"model":"x","embeddings":[[1,"a]"]]}',  # not numbers
        b'{"model":"x","embeddings":[[1],[2]',  # cut short
        b'{"model":"x","prompt_eval_count":"8"}',
    ],
)
def test_what_is_not_an_embedding_answer_is_refused(body: bytes) -> None:
    with pytest.raises(BadAnswer):
        read_answer("/api/embed", body)


def test_counts_are_shared_out_to_add_up() -> None:
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(100, [30, 10, 0]) == [73, 24, 3]  # an empty input still weighs 1
    assert sum(apportion(7, [5, 9, 13])) == 7
