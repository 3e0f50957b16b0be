"""Learning from Ollama's own timing fields, fed with real-shaped final objects."""

from __future__ import annotations

import pytest

from sollol_proxy.config.policies import Priors
from sollol_proxy.fleet.learning import ALPHA, Learner
from sollol_proxy.wire.timings import parse_timings

# Reference 3.13: the last line of a streamed /api/chat answer.
CHAT_STREAM_TAIL = (
    b'{"model":"llama3.2","created_at":"2026-08-22T01:48:22.137002Z","message":{"role":"assistant","content":" is"},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2026-08-22T01:48:26.98515Z","message":{"role":"assistant","content":""},"done":true,'
    b'"done_reason":"stop","total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,'
    b'"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}\n'
)
# Reference 3.12: a non-streamed /api/generate with a context array before the timings.
GENERATE_BODY = (
    b'{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","response":"","done":true,"done_reason":"stop",'
    b'"context":[1,2,3],"total_duration":10706818083,"load_duration":6338219291,"prompt_eval_count":2600,'
    b'"prompt_eval_duration":1300000000,"eval_count":259,"eval_duration":4232710000}'
)


def test_parse_timings_from_the_last_line_only() -> None:
    timings = parse_timings(CHAT_STREAM_TAIL)
    assert timings is not None
    assert timings.prompt_tokens == 26 and timings.output_tokens == 282
    assert timings.output_s == pytest.approx(4.535599) and timings.load_s == pytest.approx(
        0.001334875
    )
    assert parse_timings(GENERATE_BODY).load_s == pytest.approx(6.338219291)  # type: ignore[union-attr]
    assert parse_timings(CHAT_STREAM_TAIL.rsplit(b"\n", 2)[0] + b"\n") is None  # no final object
    assert parse_timings(b'{"error":"boom"}\n') is None


def test_speeds_and_load_are_learned_per_node_and_model() -> None:
    learner = Learner(Priors())
    assert learner.decode_tps("a", "m") == Priors().decode_tokens_per_s
    learner.observe_success(
        "a",
        "m",
        "chat",
        parse_timings(GENERATE_BODY),
        clean_load=True,
        cached_tokens=0,
        ttft_s=None,
        elapsed_s=11.0,
    )
    assert learner.decode_tps("a", "m") == pytest.approx(259 / 4.23271)
    assert learner.prefill_tps("a", "m") == pytest.approx(2600 / 1.3)
    assert learner.load_s("a", "m", 10**9) == pytest.approx(6.338219291)
    # What a node showed for one model is its best guess for another; another node is priced
    # as the peers measured the same model (unmeasured is not faster), and the priors stand in
    # only where nothing was measured.
    assert learner.decode_tps("a", "other") == pytest.approx(259 / 4.23271)
    assert learner.decode_tps("b", "m") == pytest.approx(259 / 4.23271)
    assert learner.prefill_tps("b", "m") == pytest.approx(2600 / 1.3)
    assert learner.decode_tps("b", "other") == Priors().decode_tokens_per_s
    assert learner.load_s("b", "m", 10**9) == pytest.approx(6.338219291)
    assert learner.load_s("b", "other", 3 * 10**9) == pytest.approx(2.0 + 2.0)


def test_a_node_told_its_own_priors_is_not_priced_like_its_peers() -> None:
    learner = Learner(Priors(), {"fast": Priors(decode_tokens_per_s=90)})
    learner.observe_success(
        "a",
        "m",
        "chat",
        parse_timings(GENERATE_BODY),
        clean_load=True,
        cached_tokens=0,
        ttft_s=None,
        elapsed_s=11.0,
    )
    assert learner.decode_tps("fast", "m") == 90


def test_decay_weights_recent_samples() -> None:
    learner = Learner(Priors())
    fast = parse_timings(GENERATE_BODY)
    for _ in range(3):
        learner.observe_success(
            "a", "m", "chat", fast, clean_load=False, cached_tokens=0, ttft_s=0.5, elapsed_s=5
        )
    slow = parse_timings(
        GENERATE_BODY.replace(b'"eval_duration":4232710000', b'"eval_duration":25900000000')
    )
    learner.observe_success(
        "a", "m", "chat", slow, clean_load=False, cached_tokens=0, ttft_s=0.5, elapsed_s=5
    )
    before = 259 / 4.23271
    assert learner.decode_tps("a", "m") == pytest.approx(before + ALPHA * (10 - before))
    assert learner.ttft_s("a", "m") == pytest.approx(0.5)


def test_loads_behind_other_loads_and_cached_prompts_are_not_learned() -> None:
    learner = Learner(Priors())
    learner.observe_success(
        "a",
        "m",
        "chat",
        parse_timings(GENERATE_BODY),
        clean_load=False,
        cached_tokens=2590,
        ttft_s=None,
        elapsed_s=11,
    )
    assert learner.load_s("a", "m", 0) == Priors().load_seconds  # load_duration included a queue
    assert learner.prefill_tps("a", "m") == Priors().prefill_tokens_per_s  # 10 uncached tokens


def test_success_rate_and_expected_output() -> None:
    learner = Learner(Priors(output_tokens=100))
    assert learner.expected_output("m", "code", None) == 100
    assert learner.expected_output("m", "code", 40) == 40
    learner.observe_success(
        "a",
        "m",
        "code",
        parse_timings(GENERATE_BODY),
        clean_load=False,
        cached_tokens=0,
        ttft_s=None,
        elapsed_s=1,
    )
    assert learner.expected_output("m", "code", None) == 259
    assert learner.success("a") == 1.0
    learner.observe_failure("a")
    assert learner.success("a") == pytest.approx(1 - ALPHA)


def test_demand_is_relative_popularity() -> None:
    learner = Learner(Priors())
    for t in range(10):
        learner.observe_request("hot", now=t * 1.0)
    learner.observe_request("cold", now=0.0)
    learner.observe_request("cold", now=5.0)
    demand = learner.demand_map(now=10.0)
    assert demand["hot"] == 1.0
    assert demand["cold"] == pytest.approx(0.2)
    assert "never" not in demand


def test_per_node_priors() -> None:
    learner = Learner(Priors(), {"gpu": Priors(decode_tokens_per_s=120)})
    assert learner.decode_tps("gpu", "m") == 120 and learner.decode_tps("cpu", "m") == 30


def test_prefill_is_learned_only_from_prompts_expected_uncached_and_sane() -> None:
    learner = Learner(Priors())
    body = GENERATE_BODY  # 2600 tokens in 1.3 s: 2000 tokens/s
    for _ in range(3):
        learner.observe_success(
            "a",
            "m",
            "chat",
            parse_timings(body),
            clean_load=False,
            cached_tokens=0,
            ttft_s=None,
            elapsed_s=1,
        )
    assert learner.prefill_tps("a", "m") == pytest.approx(2000)
    # The node had it cached after all (10x faster): not a speed.
    hit = body.replace(b'"prompt_eval_duration":1300000000', b'"prompt_eval_duration":130000000')
    learner.observe_success(
        "a",
        "m",
        "chat",
        parse_timings(hit),
        clean_load=False,
        cached_tokens=0,
        ttft_s=None,
        elapsed_s=1,
    )
    assert learner.prefill_tps("a", "m") == pytest.approx(2000)


def test_token_ratio_and_cut_answers() -> None:
    learner = Learner(Priors(output_tokens=100))
    learner.observe_success(
        "a",
        "m",
        "chat",
        parse_timings(GENERATE_BODY),
        clean_load=False,
        cached_tokens=0,
        ttft_s=None,
        elapsed_s=1,
        estimated_prompt_tokens=2000,
    )
    assert learner.token_ratio("m") == pytest.approx(1.3)  # 2600 real tokens for 2000 estimated
    assert learner.token_ratio("other") == 1.0
    cut = GENERATE_BODY.replace(b'"done_reason":"stop"', b'"done_reason":"length"')
    learner.observe_success(
        "a",
        "m",
        "summarization",
        parse_timings(cut),
        clean_load=False,
        cached_tokens=0,
        ttft_s=None,
        elapsed_s=1,
    )
    assert learner.expected_output("m", "summarization", None) == 100  # a cut answer is no length


# Reference 3.14: /api/embed's answer has no prompt_eval_duration.
EMBED_BODY = (
    b'{"model":"all-minilm","embeddings":[[0.010071029,-0.0017594862]],'
    b'"total_duration":14143917,"load_duration":1019500,"prompt_eval_count":8}'
)


def test_embedding_speed_is_learned_from_embed_answers() -> None:
    learner = Learner(Priors())
    assert learner.expected_output("all-minilm", "embedding", 0) == 0  # nothing is generated
    learner.observe_success(
        "a",
        "all-minilm",
        "embedding",
        parse_timings(EMBED_BODY),
        clean_load=True,
        cached_tokens=0,
        ttft_s=None,
        elapsed_s=0.015,
    )
    assert learner.prefill_tps("a", "all-minilm") == pytest.approx(8 / (0.014143917 - 0.0010195))
    # An embedding model's speed says nothing of the node's chat models.
    assert learner.prefill_tps("a", "llama3.2") == Priors().prefill_tokens_per_s
    assert learner.expected_output("all-minilm", "embedding", 0) == 0


def test_a_cached_prompt_among_the_first_samples_does_not_set_the_prefill_speed() -> None:
    """The first answer was cached after all (ten times faster than a full prefill): the speed
    is back to the node's own from the second clean sample, not ten samples later."""
    learner = Learner(Priors())
    hit = GENERATE_BODY.replace(
        b'"prompt_eval_duration":1300000000', b'"prompt_eval_duration":130000000'
    )
    for body in (hit, GENERATE_BODY, GENERATE_BODY):
        learner.observe_success(
            "a",
            "m",
            "chat",
            parse_timings(body),
            clean_load=False,
            cached_tokens=0,
            ttft_s=None,
            elapsed_s=1,
        )
    assert learner.prefill_tps("a", "m") == pytest.approx(2000)
    assert learner.measured_prefill_tps("a", "m") == pytest.approx(2000)
    assert learner.prefill_tps("b", "m") == pytest.approx(2000)  # what its peers measured
