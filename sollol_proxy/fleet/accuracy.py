"""How often the prompt-cache model was right: predicted against observed hits and cached
tokens, per node and model, and the warm-ups the proxy sent itself, for /sollol/stats and
/metrics."""

from __future__ import annotations

from dataclasses import dataclass

from sollol_proxy.routing.slot_match import SLOT_PROMPT_SIMILARITY


@dataclass(slots=True)
class Accuracy:
    """Predicted against observed, for the requests whose prompt the node evaluated."""

    requests: int = 0
    predicted_hits: int = 0  # predicted to reuse more than 10% of the prompt
    observed_hits: int = 0  # the timing fields say they did
    agreed: int = 0  # both said the same
    prompt_tokens: int = 0  # Ollama's prompt_eval_count, summed
    predicted_tokens: int = 0
    observed_tokens: int = 0

    def missed(self, predicted: int, observed: int, prompt_count: int) -> bool:
        """Score one request (its cached prompt tokens, predicted and observed, out of
        `prompt_count`); True when a predicted hit was a miss: the runner lost what the proxy
        believed it held."""
        predicted = min(predicted, prompt_count - 1)
        observed = max(0, min(observed, prompt_count - 1))
        threshold = SLOT_PROMPT_SIMILARITY * prompt_count
        predicted_hit, observed_hit = predicted > threshold, observed > threshold
        self.requests += 1
        self.predicted_hits += predicted_hit
        self.observed_hits += observed_hit
        self.agreed += predicted_hit == observed_hit
        self.prompt_tokens += prompt_count
        self.predicted_tokens += predicted
        self.observed_tokens += observed
        return predicted_hit and not observed_hit

    def add(self, other: Accuracy) -> None:
        self.requests += other.requests
        self.predicted_hits += other.predicted_hits
        self.observed_hits += other.observed_hits
        self.agreed += other.agreed
        self.prompt_tokens += other.prompt_tokens
        self.predicted_tokens += other.predicted_tokens
        self.observed_tokens += other.observed_tokens

    def to_json(self) -> dict[str, float | int]:
        def ratio(part: int, whole: int) -> float:
            return round(part / whole, 3) if whole else 0.0

        return {
            "requests": self.requests,
            "predicted_hit_ratio": ratio(self.predicted_hits, self.requests),
            "observed_hit_ratio": ratio(self.observed_hits, self.requests),
            "agreement": ratio(self.agreed, self.requests),
            "prompt_tokens": self.prompt_tokens,
            "predicted_cached_tokens": self.predicted_tokens,
            "observed_cached_tokens": self.observed_tokens,
            "predicted_cached_ratio": ratio(self.predicted_tokens, self.prompt_tokens),
            "observed_cached_ratio": ratio(self.observed_tokens, self.prompt_tokens),
        }


@dataclass(slots=True)
class Warmups:
    """The prefills the proxy sent itself to copy a shared system prompt (forward/warmup.py)."""

    sent: int = 0
    done: int = 0  # answered: the slot holds the prompt
    failed: int = 0  # an error, a timeout, or cut short (the slot is believed as it was)
    tokens: int = 0  # prompt tokens sent, the proxy's estimate

    def to_json(self) -> dict[str, int]:
        return {"sent": self.sent, "done": self.done, "failed": self.failed, "tokens": self.tokens}
