"""Request analysis is a pure function of (path, parsed body): no event loop, no I/O."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sollol_proxy.routing.analysis import (
    COMPLEXITIES,
    IMAGE_TOKENS,
    RUNNER_OPTIONS,
    TASKS,
    RequestProfile,
    analyze,
)

# Base64 stand-ins long enough for the image marker's three samples to differ.
IMAGE_A = "iVBORw0KGgo" + "A" * 200 + "aaaa" + "B" * 200 + "end1"
IMAGE_B = "iVBORw0KGgo" + "C" * 200 + "bbbb" + "D" * 200 + "end2"


def tokens(chars: int, messages: int = 0, images: int = 0) -> int:
    return -(-chars // 4) + 4 * messages + IMAGE_TOKENS * images


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **extra}


def msg(role: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def native_chat(payload: dict[str, Any] | None) -> RequestProfile:
    return analyze("/api/chat", payload, "m", True)


def generate(prompt: str, **extra: Any) -> RequestProfile:
    return analyze("/api/generate", {"model": "m", "prompt": prompt, **extra}, "m", True)


# --- endpoints and field locations -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/api/chat", "chat"),
        ("/api/generate", "generate"),
        ("/api/embed", "embed"),
        ("/api/embeddings", "embeddings"),
        ("/v1/chat/completions", "v1_chat"),
        ("/v1/completions", "v1_completions"),
        ("/v1/embeddings", "v1_embeddings"),
        ("/v1/responses", "v1_responses"),
        ("/v1/messages", "v1_messages"),
        ("/api/chat/", "chat"),
        ("/api/show", "other"),
        ("/v1/models", "other"),
        ("/", "other"),
    ],
)
def test_endpoint_by_path(path: str, endpoint: str) -> None:
    profile = analyze(path, {"model": "m"}, "m", False)
    assert profile.endpoint == endpoint
    assert profile.model == "m"
    assert profile.stream is False


def test_native_chat_counts_messages_and_their_images() -> None:
    profile = native_chat(
        chat(
            msg("system", "You are terse."),
            msg("user", "What is in this picture?", images=[IMAGE_A, IMAGE_B]),
            msg("assistant", "A cat."),
            msg("user", "And this one?", images=[IMAGE_A]),
        )
    )
    assert profile.depth == 4
    assert profile.images == 3
    assert profile.prompt_tokens == tokens(14 + 24 + 6 + 13, messages=4, images=3)
    assert profile.max_output is None
    assert profile.task == "chat"
    assert len(profile.prefix_keys) == 4
    # The running estimate ends at the whole prompt and includes the images where they appear.
    assert [t for _, t in profile.prefix_keys] == [
        tokens(14, 1),
        tokens(38, 2, 2),
        tokens(44, 3, 2),
        tokens(57, 4, 3),
    ]


def test_images_change_the_key_of_their_message() -> None:
    with_a = native_chat(chat(msg("user", "look", images=[IMAGE_A]))).prefix_keys
    with_b = native_chat(chat(msg("user", "look", images=[IMAGE_B]))).prefix_keys
    without = native_chat(chat(msg("user", "look"))).prefix_keys
    assert len({with_a[0][0], with_b[0][0], without[0][0]}) == 3


def test_generate_reads_system_prompt_suffix_and_images() -> None:
    profile = generate(
        "def add(a, b):",
        system="Complete the snippet.",
        suffix="    return total",
        images=[IMAGE_A],
        options={"num_predict": 64},
    )
    assert profile.endpoint == "generate"
    assert profile.depth == 0
    assert profile.images == 1
    assert profile.prompt_tokens == tokens(14 + 21 + 16, images=1)
    assert profile.max_output == 64
    assert len(profile.prefix_keys) == 1
    assert profile.prefix_keys[-1][1] == profile.prompt_tokens


def test_generate_suffix_and_images_are_part_of_the_full_key() -> None:
    plain = generate("abc").prefix_keys
    assert generate("abc", suffix="x").prefix_keys != plain
    assert generate("abc", images=[IMAGE_A]).prefix_keys != plain


@pytest.mark.parametrize(
    ("path", "body", "chars", "extra_tokens"),
    [
        ("/api/embed", {"input": "hello world"}, 11, 0),
        ("/api/embed", {"input": ["hello", "big world"]}, 14, 0),
        ("/api/embed", {"input": []}, 0, 0),
        ("/api/embeddings", {"prompt": "hello world"}, 11, 0),
        ("/v1/embeddings", {"input": "hello world"}, 11, 0),
        ("/v1/embeddings", {"input": ["hello", "big world"]}, 14, 0),
        # Pre-tokenised inputs count one token per element.
        ("/v1/embeddings", {"input": [[1, 2, 3], [4, 5]]}, 0, 5),
        ("/v1/embeddings", {"input": [1, 2, 3]}, 0, 3),
    ],
)
def test_embeddings(path: str, body: dict[str, Any], chars: int, extra_tokens: int) -> None:
    profile = analyze(path, {"model": "e", **body}, "e", False)
    assert profile.prompt_tokens == tokens(chars) + extra_tokens
    assert profile.task == "embedding"
    assert profile.max_output == 0
    assert profile.depth == 0
    assert profile.prefix_keys == ()
    assert profile.complexity == "low"


def test_v1_chat_content_parts_and_image_url() -> None:
    profile = analyze(
        "/v1/chat/completions",
        chat(
            msg("system", "Be brief."),
            msg(
                "user",
                [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + IMAGE_A}},
                    {"type": "text", "text": "both of these"},
                    {"type": "image_url", "image_url": "data:image/png;base64," + IMAGE_B},
                    {"type": "input_audio", "input_audio": {"data": "xx", "format": "wav"}},
                ],
            ),
            max_tokens=100,
        ),
        "m",
        False,
    )
    assert profile.endpoint == "v1_chat"
    assert profile.depth == 2
    assert profile.images == 2
    assert profile.prompt_tokens == tokens(9 + 8 + 13, messages=2, images=2)
    assert profile.max_output == 100


def test_one_text_part_hashes_like_a_plain_string() -> None:
    plain = analyze("/v1/chat/completions", chat(msg("user", "hello")), "m", False)
    parts = analyze(
        "/v1/chat/completions",
        chat(msg("user", [{"type": "text", "text": "hello"}])),
        "m",
        False,
    )
    assert parts.prefix_keys == plain.prefix_keys
    # And a /v1 conversation shares its prefix keys with the same native one.
    assert native_chat(chat(msg("user", "hello"))).prefix_keys == plain.prefix_keys


def test_the_same_image_hashes_alike_natively_and_as_a_data_url() -> None:
    native = native_chat(chat(msg("user", "what is this", images=[IMAGE_A])))
    v1 = analyze(
        "/v1/chat/completions",
        chat(
            msg(
                "user",
                [
                    {"type": "text", "text": "what is this"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/jpeg;base64," + IMAGE_A},
                    },
                ],
            )
        ),
        "m",
        False,
    )
    assert v1.prefix_keys == native.prefix_keys
    assert v1.prompt_tokens == native.prompt_tokens


def test_v1_completions() -> None:
    profile = analyze(
        "/v1/completions",
        {"model": "m", "prompt": "Once upon a time", "suffix": "The end.", "max_tokens": 300},
        "m",
        True,
    )
    assert profile.endpoint == "v1_completions"
    assert profile.prompt_tokens == tokens(16 + 8)
    assert profile.max_output == 300
    assert profile.depth == 0
    assert profile.task == "generation"
    assert len(profile.prefix_keys) == 1
    assert profile.stream is True


def test_v1_messages_with_top_level_system_and_blocks() -> None:
    payload = {
        "model": "m",
        "system": "You are a poet.",
        "max_tokens": 2048,
        "messages": [
            msg(
                "user",
                [
                    {"type": "text", "text": "A poem about this"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": IMAGE_A},
                    },
                ],
            ),
            msg(
                "assistant",
                [{"type": "tool_use", "id": "t1", "name": "rhyme", "input": {"word": "cat"}}],
            ),
            msg(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "hat, mat"}],
                    },
                    {"type": "tool_result", "tool_use_id": "t2", "content": "bat"},
                ],
            ),
        ],
    }
    profile = analyze("/v1/messages", payload, "m", True)
    assert profile.endpoint == "v1_messages"
    assert profile.depth == 4  # the system prompt counts as the first message
    assert profile.images == 1
    assert profile.prompt_tokens == tokens(15 + 17 + 5 + 8 + 3, messages=4, images=1)
    assert profile.max_output == 2048
    assert profile.complexity == "high"  # max_output > 1024

    # A list-of-blocks system prompt is the same system prompt.
    blocks = {**payload, "system": [{"type": "text", "text": "You are a poet."}]}
    assert analyze("/v1/messages", blocks, "m", True).prefix_keys == profile.prefix_keys


def test_v1_messages_system_is_a_first_system_message() -> None:
    anthropic = analyze(
        "/v1/messages",
        {"model": "m", "system": "Be kind.", "messages": [msg("user", "hi")]},
        "m",
        False,
    )
    native = native_chat(chat(msg("system", "Be kind."), msg("user", "hi")))
    assert anthropic.prefix_keys == native.prefix_keys


def test_v1_responses_with_instructions_and_input_list() -> None:
    payload = {
        "model": "m",
        "instructions": "Answer in French.",
        "max_output_tokens": 50,
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64," + IMAGE_A},
                ],
            },
            {"type": "function_call", "call_id": "c1", "name": "look", "arguments": '{"x":1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "a cat"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Un chat."}],
            },
            {"type": "reasoning", "summary": []},
        ],
    }
    profile = analyze("/v1/responses", payload, "m", False)
    assert profile.endpoint == "v1_responses"
    assert profile.depth == 5  # instructions + 4 message-like items; reasoning items are skipped
    assert profile.images == 1
    function_call = len("look") + 1 + len('{"x":1}')
    assert profile.prompt_tokens == tokens(17 + 13 + function_call + 5 + 8, messages=5, images=1)
    assert profile.max_output == 50


def test_v1_responses_string_input_is_one_user_message() -> None:
    profile = analyze(
        "/v1/responses",
        {"model": "m", "instructions": "Be kind.", "input": "hi"},
        "m",
        False,
    )
    native = native_chat(chat(msg("system", "Be kind."), msg("user", "hi")))
    assert profile.depth == 2
    assert profile.prefix_keys == native.prefix_keys
    assert profile.prompt_tokens == native.prompt_tokens


# --- runner options and max_output -----------------------------------------------------------


def test_runner_options_only_load_time_ones_sorted() -> None:
    options = {
        "temperature": 0.2,
        "num_predict": 10,
        "use_mmap": False,
        "num_thread": 8,
        "num_ctx": 8192,
        "seed": 3,
        "main_gpu": 0,
        "num_batch": 256,
        "num_gpu": 99,
        "draft_num_predict": 4,
        "stop": ["\n"],
    }
    profile = native_chat(chat(msg("user", "hi"), options=options))
    assert profile.runner_options == (
        ("draft_num_predict", 4),
        ("main_gpu", 0),
        ("num_batch", 256),
        ("num_ctx", 8192),
        ("num_gpu", 99),
        ("num_thread", 8),
        ("use_mmap", False),
    )
    assert {name for name, _ in profile.runner_options} == set(RUNNER_OPTIONS)


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings"])
def test_runner_options_on_every_native_route(path: str) -> None:
    body = {"model": "m", "prompt": "x", "input": "x", "options": {"num_ctx": 4096, "top_k": 5}}
    assert analyze(path, body, "m", True).runner_options == (("num_ctx", 4096),)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_runner_options_ignored_on_v1(path: str) -> None:
    # Ollama ignores `options` on /v1 (reference 3.17), so it cannot trigger a reload there.
    body = {"model": "m", "prompt": "x", "input": "x", "options": {"num_ctx": 4096}}
    assert analyze(path, body, "m", True).runner_options == ()


def test_runner_options_drop_non_scalars_so_the_profile_stays_hashable() -> None:
    profile = native_chat(chat(msg("user", "hi"), options={"num_ctx": [1], "num_gpu": None}))
    assert profile.runner_options == ()
    hash(profile)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/api/chat", {"options": {"num_predict": 128}}, 128),
        ("/api/chat", {"options": {"num_predict": -1}}, None),
        ("/api/chat", {"options": {"num_predict": 0}}, None),
        ("/api/chat", {"options": {"num_predict": 100.0}}, 100),
        ("/api/chat", {"options": {"num_predict": True}}, None),
        ("/api/chat", {"options": {"num_predict": "100"}}, None),
        ("/api/chat", {"options": {"num_predict": float("inf")}}, None),
        ("/api/chat", {"max_tokens": 128}, None),  # not a native field
        ("/api/chat", {}, None),
        ("/api/generate", {"options": {"num_predict": 64}}, 64),
        ("/v1/chat/completions", {"max_tokens": 77}, 77),
        ("/v1/chat/completions", {"max_completion_tokens": 88}, 88),
        ("/v1/chat/completions", {"max_tokens": 77, "max_completion_tokens": 88}, 77),
        ("/v1/chat/completions", {"max_tokens": 0}, None),
        ("/v1/chat/completions", {"options": {"num_predict": 5}}, None),
        ("/v1/completions", {"max_tokens": 99}, 99),
        ("/v1/responses", {"max_output_tokens": 66}, 66),
        ("/v1/responses", {"max_tokens": 66}, None),
        ("/v1/messages", {"max_tokens": 1024}, 1024),
        ("/api/embed", {"options": {"num_predict": 5}}, 0),
        ("/v1/embeddings", {}, 0),
    ],
)
def test_max_output_sources(path: str, body: dict[str, Any], expected: int | None) -> None:
    payload = {"model": "m", "messages": [msg("user", "hi")], "prompt": "hi", "input": "hi", **body}
    assert analyze(path, payload, "m", False).max_output == expected


# --- task table ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("Here:\n```\nx = 1\n```", "code"),
        ("Write a function that adds two numbers", "code"),
        ("Why does my Python script crash?", "code"),
        ("Convert this to TypeScript", "code"),
        ("Fix the SQL query", "code"),
        ("Write a regex for emails", "code"),
        ("There is a bug here", "code"),
        ("Explain this stack trace", "code"),
        ("It will not compile", "code"),
        ("Please refactor this", "code"),
        ("Implement a queue", "code"),
        ("Add a unit test", "code"),
        ("Review my code.", "code"),
        ("Summarize this article", "summarization"),
        ("Summarise the meeting", "summarization"),
        ("Give me a summary", "summarization"),
        ("tl;dr please", "summarization"),
        ("Condense the following", "summarization"),
        ("What are the key points?", "summarization"),
        ("Extract the dates", "extraction"),
        ("Pull out every name", "extraction"),
        ("List all the cities mentioned", "extraction"),
        ("Parse this address", "extraction"),
        ("Fill in the JSON with the fields", "extraction"),
        ("Classify this ticket", "classification"),
        ("Categorize these items", "classification"),
        ("Categorise these items", "classification"),
        ("Which category fits best?", "classification"),
        ("What is the sentiment of this review?", "classification"),
        ("Label this message", "classification"),
        ("Is this spam?", "classification"),
        ("Answer yes or no: is the sky blue?", "classification"),
        ("Analyze the results", "analysis"),
        ("Analyse the results", "analysis"),
        ("Compare Rome and Paris", "analysis"),
        ("Evaluate this plan", "analysis"),
        ("Assess the risk", "analysis"),
        ("Pros and cons of remote work", "analysis"),
        ("Explain why the sky is blue", "analysis"),
        ("Reason about the outcome", "analysis"),
        ("Hello, how are you?", "chat"),
        # Word boundaries: these contain a keyword only as part of another word.
        ("Decode this message for me", "chat"),
        ("The barcode is on the box", "chat"),
        ("Bugsy Malone was a film", "chat"),
        # First matching row wins, whatever the order in the text.
        ("Summarize and compare, then classify, then extract, in python", "code"),
        ("Compare, classify and extract, then summarize", "summarization"),
        ("Compare and classify, then extract", "extraction"),
        ("Compare, then classify", "classification"),
    ],
)
def test_task_table(text: str, task: str) -> None:
    assert native_chat(chat(msg("user", text))).task == task


def test_task_prompt_style_defaults_to_generation() -> None:
    assert generate("Once upon a time").task == "generation"
    assert generate("Summarize: the cat sat").task == "summarization"
    assert analyze("/v1/completions", {"prompt": "Decode it"}, "m", False).task == "generation"


def test_task_reads_the_system_prompt_and_only_the_last_user_message() -> None:
    assert native_chat(chat(msg("system", "You classify emails."), msg("user", "hi"))).task == (
        "classification"
    )
    assert generate("hi", system="You write Python.").task == "code"
    assert (
        analyze(
            "/v1/messages",
            {"system": "Summarize everything.", "messages": [msg("user", "hi")]},
            "m",
            False,
        ).task
        == "summarization"
    )
    assert (
        analyze("/v1/responses", {"instructions": "Extract names.", "input": "hi"}, "m", False).task
        == "extraction"
    )
    assert (
        analyze(
            "/v1/chat/completions",
            chat(msg("developer", "Compare options."), msg("user", "hi")),
            "m",
            False,
        ).task
        == "analysis"
    )
    earlier_code = chat(
        msg("user", "Write python code"),
        msg("assistant", "Here is the code and a summary"),
        msg("user", "Thanks!"),
    )
    assert native_chat(earlier_code).task == "chat"


def test_task_structured_output_means_extraction_unless_a_higher_rule_matches() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    assert native_chat(chat(msg("user", "John is 30"), format="json")).task == "extraction"
    assert native_chat(chat(msg("user", "John is 30"), format=schema)).task == "extraction"
    assert native_chat(chat(msg("user", "John is 30"), format="")).task == "chat"
    assert generate("John is 30", format="json").task == "extraction"
    assert native_chat(chat(msg("user", "Write a function"), format="json")).task == "code"
    assert native_chat(chat(msg("user", "Give a summary"), format="json")).task == "summarization"
    # Structured output outranks the lower rows.
    assert native_chat(chat(msg("user", "Compare them"), format="json")).task == "extraction"

    def v1(response_format: Any) -> str:
        body = chat(msg("user", "John is 30"), response_format=response_format)
        return analyze("/v1/chat/completions", body, "m", False).task

    assert v1({"type": "json_object"}) == "extraction"
    assert v1({"type": "json_schema", "json_schema": {"schema": schema}}) == "extraction"
    assert v1({"type": "text"}) == "chat"

    def responses(text: Any) -> str:
        return analyze("/v1/responses", {"input": "John is 30", "text": text}, "m", False).task

    assert responses({"format": {"type": "json_schema", "schema": schema}}) == "extraction"
    assert responses({"format": {"type": "text"}}) == "chat"


def test_task_looks_at_the_ends_of_a_long_text() -> None:
    filler = "lorem ipsum dolor sit amet " * 2000
    assert native_chat(chat(msg("user", filler + "Summarize the above."))).task == "summarization"
    assert native_chat(chat(msg("user", "Summarize the below. " + filler))).task == "summarization"
    # Deep in the middle of a 54 KB message a keyword is not worth the scan.
    assert native_chat(chat(msg("user", filler + "summarize" + filler))).task == "chat"


# --- complexity ------------------------------------------------------------------------------


def complexity_of_prompt(chars: int, prefix: str = "", **options: Any) -> tuple[int, str, str]:
    profile = generate(prefix + "z" * (chars - len(prefix)), options=options)
    return profile.prompt_tokens, profile.task, profile.complexity


def test_complexity_low_boundary_on_prompt_size() -> None:
    assert complexity_of_prompt(4 * 299) == (299, "generation", "low")
    assert complexity_of_prompt(4 * 300) == (300, "generation", "medium")


def test_complexity_low_boundary_on_output() -> None:
    assert complexity_of_prompt(40, num_predict=256)[2] == "low"
    assert complexity_of_prompt(40, num_predict=257)[2] == "medium"


def test_complexity_low_only_for_light_tasks() -> None:
    for prefix, task in [
        ("label this ", "classification"),
        ("extract ", "extraction"),
        ("", "generation"),
    ]:
        assert complexity_of_prompt(40, prefix) == (10, task, "low")
    for prefix, task in [
        ("summarize ", "summarization"),
        ("compare ", "analysis"),
        ("sql ", "code"),
    ]:
        assert complexity_of_prompt(40, prefix) == (10, task, "medium")
    assert native_chat(chat(msg("user", "hello"))).complexity == "low"


def test_complexity_high_boundaries() -> None:
    assert complexity_of_prompt(4 * 4000) == (4000, "generation", "medium")
    assert complexity_of_prompt(4 * 4001) == (4001, "generation", "high")
    assert complexity_of_prompt(40, num_predict=1024)[2] == "medium"
    assert complexity_of_prompt(40, num_predict=1025)[2] == "high"
    # Code and analysis turn high from 1000 prompt tokens; other tasks do not.
    assert complexity_of_prompt(4 * 1000, "python ") == (1000, "code", "medium")
    assert complexity_of_prompt(4 * 1001, "python ") == (1001, "code", "high")
    assert complexity_of_prompt(4 * 1001, "compare ") == (1001, "analysis", "high")
    assert complexity_of_prompt(4 * 1001, "summarize ") == (1001, "summarization", "medium")


def test_complexity_values_are_from_the_declared_vocabulary() -> None:
    profile = native_chat(chat(msg("user", "hi")))
    assert profile.complexity in COMPLEXITIES
    assert profile.task in TASKS


# --- prefix keys -----------------------------------------------------------------------------

SYSTEM = msg("system", "You are a helpful assistant.")
TURN_1 = [SYSTEM, msg("user", "What is the capital of France?")]
TURN_2 = [*TURN_1, msg("assistant", "Paris."), msg("user", "And of Italy?")]


def test_a_later_turn_extends_the_keys_of_an_earlier_one() -> None:
    first = native_chat(chat(*TURN_1)).prefix_keys
    second = native_chat(chat(*TURN_2)).prefix_keys
    assert len(first) == 2
    assert len(second) == 4
    assert second[:2] == first
    cumulative = [t for _, t in second]
    assert cumulative == sorted(cumulative)
    assert len(set(cumulative)) == 4


def test_changing_the_system_prompt_changes_every_key() -> None:
    original = native_chat(chat(*TURN_2)).prefix_keys
    other = native_chat(chat(msg("system", "You are a pirate."), *TURN_2[1:])).prefix_keys
    assert len(other) == len(original)
    assert not {k for k, _ in original} & {k for k, _ in other}


def test_role_is_part_of_the_key_and_is_case_insensitive() -> None:
    user = native_chat(chat(msg("user", "hi"))).prefix_keys
    assistant = native_chat(chat(msg("assistant", "hi"))).prefix_keys
    shouting = native_chat(chat(msg("USER", "hi"))).prefix_keys
    assert user != assistant
    assert user == shouting  # Ollama lower-cases roles on input


def test_generate_prompts_sharing_a_preamble_share_its_block_keys() -> None:
    preamble = "".join(f"Rule {i}: be precise and kind. " for i in range(200))[:3000]
    first = generate(preamble + " Question one: what is two plus two?").prefix_keys
    second = generate(preamble + " Question two: name a colour of the sky.").prefix_keys
    # Blocks end at 1024 and 2048 characters of "\0" + prompt: both inside the preamble.
    assert first[:2] == second[:2]
    assert [t for _, t in first[:2]] == [tokens(1023), tokens(2047)]
    assert first[2:] != second[2:]
    assert len(first) == 3  # two blocks, then the full prompt
    assert first[-1][1] == tokens(len(preamble) + 36)


def test_generate_blocks_include_the_system_prompt() -> None:
    preamble = "x" * 2500
    assert (
        generate("a", system=preamble).prefix_keys[:2]
        == generate("b", system=preamble).prefix_keys[:2]
    )
    assert generate("a", system=preamble).prefix_keys[0] != generate(preamble + "a").prefix_keys[0]


def test_generate_a_prompt_of_whole_blocks_has_no_duplicate_final_key() -> None:
    keys = generate("y" * 2047).prefix_keys  # "\0" + 2047 characters: exactly two blocks
    assert len(keys) == 2
    assert keys[-1][1] == tokens(2047)


def test_generate_without_a_prompt_has_no_keys() -> None:
    # An empty prompt only loads or unloads the model: nothing gets cached.
    assert generate("").prefix_keys == ()
    assert generate("", keep_alive=0).prompt_tokens == 0


def test_keys_are_16_bytes_and_stable() -> None:
    profile = native_chat(chat(*TURN_2))
    for key, cumulative in profile.prefix_keys:
        assert isinstance(key, bytes)
        assert len(key) == 16
        assert isinstance(cumulative, int)
    # Pinned so that a refactor cannot silently invalidate every node's affinity map.
    assert [k.hex() for k, _ in profile.prefix_keys] == [
        "ab770a9c9362b857eb8e93fb21e6323c",
        "47cee1ee9dc59ec1e1a318f2421007a4",
        "938dcf197be691c3a3357ce04ad8149d",
        "aebfd500426d8dee5cab222d3971f788",
    ]
    assert [k.hex() for k, _ in generate("z" * 1500, system="Be brief.").prefix_keys] == [
        "11e1e0d0d6405416b1c3b06d373e0cba",
        "b340bd5d6ac7051689d9cd2f36650f49",
    ]


def test_keys_do_not_depend_on_model_or_stream() -> None:
    one = analyze("/api/chat", chat(*TURN_1), "llama3.2:latest", True)
    two = analyze("/api/chat", {**chat(*TURN_1), "model": "qwen3:8b"}, "qwen3:8b", False)
    assert one.prefix_keys == two.prefix_keys


def test_no_keys_for_embeddings_and_other_routes() -> None:
    assert analyze("/api/embed", {"input": "x" * 5000}, "e", False).prefix_keys == ()
    assert analyze("/api/show", {"model": "m"}, "m", False).prefix_keys == ()


def test_a_chat_without_messages_has_no_keys() -> None:
    profile = native_chat(chat())
    assert profile.prefix_keys == ()
    assert profile.prompt_tokens == 0
    assert profile.depth == 0


# --- bodies that are not what they should be -------------------------------------------------


@pytest.mark.parametrize(
    ("path", "task", "max_output"),
    [
        ("/api/chat", "chat", None),
        ("/v1/chat/completions", "chat", None),
        ("/v1/messages", "chat", None),
        ("/v1/responses", "chat", None),
        ("/api/generate", "generation", None),
        ("/v1/completions", "generation", None),
        ("/api/embed", "embedding", 0),
        ("/api/embeddings", "embedding", 0),
        ("/v1/embeddings", "embedding", 0),
        ("/api/tags", "generation", None),
    ],
)
@pytest.mark.parametrize("payload", [None, ["not", "an", "object"]])
def test_payload_none(path: str, task: str, max_output: int | None, payload: Any) -> None:
    profile = analyze(path, payload, "m", True)
    assert profile == RequestProfile(
        endpoint=profile.endpoint,
        model="m",
        runner_options=(),
        prompt_tokens=0,
        depth=0,
        max_output=max_output,
        images=0,
        task=task,
        complexity="low",
        prefix_keys=(),
        stream=True,
    )


def test_malformed_fields_are_skipped_not_raised() -> None:
    profile = native_chat(
        {
            "messages": [
                "not a message",
                {"role": "user"},
                {"role": "user", "content": None, "images": "nope"},
                {"role": 3, "content": "x"},
                {"role": "user", "content": [None, 5, {"type": "text", "text": 7}, "bare"]},
                {"role": "user", "content": "lone surrogate \ud800 here"},
            ],
            "options": "fast",
        }
    )
    assert profile.depth == 4
    assert profile.runner_options == ()
    assert native_chat({"messages": {"role": "user"}}).depth == 0
    assert generate(None).prefix_keys == ()  # type: ignore[arg-type]
    assert analyze("/v1/messages", {"system": 5, "messages": None}, "m", False).depth == 0


def test_profile_is_frozen_and_hashable() -> None:
    profile = native_chat(chat(*TURN_1, options={"num_ctx": 2048}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.task = "code"  # type: ignore[misc]
    assert hash(profile) == hash(native_chat(chat(*TURN_1, options={"num_ctx": 2048})))
