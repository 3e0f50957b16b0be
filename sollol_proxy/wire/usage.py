"""Token counts in the OpenAI- and Anthropic-style answers of Ollama's `/v1` routes.

Native answers carry `prompt_eval_count` and `eval_count` in their final object (read by
`wire/timings.parse_timings`); `/v1` answers carry the same counts as `usage`:
`prompt_tokens`/`completion_tokens` (chat, completions, embeddings) or
`input_tokens`/`output_tokens` (responses, messages). A streamed `/v1` answer has them only when
the client asked (`stream_options.include_usage`); Anthropic streams give the input count in
their first event, which the tail does not hold.
"""

from __future__ import annotations

import re

_INPUT = re.compile(rb'"(?:prompt_tokens|input_tokens)":\s*(\d{1,12})')
_OUTPUT = re.compile(rb'"(?:completion_tokens|output_tokens)":\s*(\d{1,12})')


def usage_counts(tail: bytes) -> tuple[int, int] | None:
    """(input, output) tokens from the last `usage` in the end of an answer; None without one."""
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None
    usage = tail[at:]
    inputs, outputs = _INPUT.findall(usage), _OUTPUT.findall(usage)
    if not inputs and not outputs:
        return None
    return (int(inputs[-1]) if inputs else 0), (int(outputs[-1]) if outputs else 0)
