"""Deterministic stand-ins for model output: tokens, token counts, embeddings.

Everything is a pure function of the input text so that two identical requests produce
identical bytes (in deterministic mode) and a test can predict the output.
"""

from __future__ import annotations

import hashlib
import math
import random

DEFAULT_NUM_PREDICT = 12

_WORDS = (
    "the",
    "sky",
    "is",
    "blue",
    "because",
    "of",
    "Rayleigh",
    "scattering",
    "light",
    "waves",
    "from",
    "sun",
    "reach",
    "our",
    "eyes",
    "and",
    "shorter",
    "wavelengths",
    "spread",
    "more",
    "across",
    "atmosphere",
    "so",
    "we",
    "see",
    "a",
    "bright",
    "color",
    "during",
    "day",
    "llamas",
    "are",
    "friendly",
    "animals",
    "that",
    "live",
    "in",
    "mountains",
    "quickly",
)


def _rng(text: str) -> random.Random:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return random.Random(seed)


def count_tokens(text: str) -> int:
    """Rough tokenizer: about four characters per token, never zero."""
    return len(text) // 4 + 1


def tokens_for(text: str, n: int) -> list[str]:
    """n tokens as the model would stream them: the first capitalised, later ones space-led."""
    rng = _rng(text)
    out: list[str] = []
    for i in range(n):
        word = rng.choice(_WORDS)
        out.append(word.capitalize() if i == 0 else " " + word)
    if out:
        out[-1] += "."
    return out


def plan_length(options: dict[str, object]) -> tuple[int, str]:
    """(token count, done_reason). num_predict > 0 is honoured exactly and reported as a
    length stop, which lets callers choose the stream length; otherwise the model 'stops'."""
    value = options.get("num_predict")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value), "length"
    return DEFAULT_NUM_PREDICT, "stop"


def context_ids(text: str, n: int) -> list[int]:
    rng = _rng("ctx:" + text)
    return [rng.randrange(1, 128000) for _ in range(n)]


def _vector(text: str, dim: int) -> list[float]:
    rng = _rng("emb:" + text)
    # Magnitudes are kept away from zero: Go switches to exponent notation below 1e-6 and
    # Python's repr below 1e-4, so small values would print differently.
    return [rng.choice((-1.0, 1.0)) * rng.uniform(0.05, 1.0) for _ in range(dim)]


def embedding(text: str, dim: int = 8) -> list[float]:
    """L2-normalised vector, rounded to float32-like precision (Go marshals []float32)."""
    vec = _vector(text, dim)
    norm = math.sqrt(sum(v * v for v in vec))
    return [float(f"{v / norm:.7g}") for v in vec]


def legacy_embedding(text: str, dim: int = 8) -> list[float]:
    """/api/embeddings returns float64 values that are not normalised."""
    return [round(v * 3.0, 12) for v in _vector(text, dim)]
