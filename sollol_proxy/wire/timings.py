"""Ollama's timing fields (reference 5.6): the final object of every /api/chat and
/api/generate answer carries them in nanoseconds; they are read from the answer's last bytes as it
passes, the client's bytes untouched."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A load_duration under this is Ollama's bookkeeping for a resident model, not a load.
LOAD_THRESHOLD_S = 0.25

_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
_FIELD_RE = {name: re.compile(rb'"' + name.encode() + rb'":(\d+)') for name in _FIELDS}


@dataclass(frozen=True, slots=True)
class Timings:
    total_s: float
    load_s: float
    prompt_tokens: int
    prompt_s: float
    output_tokens: int
    output_s: float
    hit_limit: bool = False  # done_reason "length": the answer was cut at num_predict


def parse_timings(tail: bytes) -> Timings | None:
    """The timing fields of the final object, found in the last bytes of a response."""
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    if b'"total_duration"' not in last:
        return None
    values = {}
    for name, pattern in _FIELD_RE.items():
        match = pattern.search(last)
        values[name] = int(match.group(1)) if match else 0
    return Timings(
        total_s=values["total_duration"] / 1e9,
        load_s=values["load_duration"] / 1e9,
        prompt_tokens=values["prompt_eval_count"],
        prompt_s=values["prompt_eval_duration"] / 1e9,
        output_tokens=values["eval_count"],
        output_s=values["eval_duration"] / 1e9,
        hit_limit=b'"done_reason":"length"' in last,
    )
