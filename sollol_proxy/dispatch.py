"""One request's attempts, fed back into the live state of the fleet and into the learner.

Dispatches update the node state at once (in flight per model, loads under way, residency,
runner options, prompt-cache affinity); the background refresh corrects it later.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from .affinity import PromptCache
from .fleet import Fleet, NodeState
from .learning import Learner, parse_timings
from .routing.analysis import RequestProfile
from .snapshot import planned_victims


class Attempt:
    """The request on one node, from dispatch to its last byte."""

    def __init__(self, observer: DispatchObserver, node: NodeState) -> None:
        self._observer = observer
        self.node = node
        self.started = time.monotonic()
        self.first_byte_at: float | None = None
        self.cold = False  # the model was not resident here when the request was sent
        self.loads_ahead = 0  # loads this node was already busy with when it was sent
        self.load_pending = False  # counted in node.loads_pending until the first byte

    def first_byte(self, status: int) -> None:
        self.first_byte_at = time.monotonic()
        self._observer.first_byte(self, status)

    def finished(self, status: int, tail: bytes) -> None:
        self._observer.finished(self, status, tail)

    def failed(self) -> None:
        self._observer.learner.observe_failure(self.node.name)


class DispatchObserver:
    def __init__(
        self,
        fleet: Fleet,
        learner: Learner,
        cache: PromptCache,
        profile: RequestProfile,
        cached_tokens: Mapping[str, int],
        decision: dict[str, Any] | None = None,
    ) -> None:
        self.fleet = fleet
        self.learner = learner
        self.cache = cache
        self.profile = profile
        self.cached_tokens = cached_tokens
        self.decision = decision

    @contextlib.asynccontextmanager
    async def attempt(self, node: NodeState) -> AsyncIterator[Attempt]:
        model = self.profile.model
        attempt = Attempt(self, node)
        attempt.cold = attempt.load_pending = not node.is_resident(model)
        attempt.loads_ahead = node.loads_pending
        if attempt.cold:
            self._evict(node, planned_victims(node, model, self.learner))
        async with self.fleet.lease(node, model):
            if attempt.load_pending:
                node.loads_pending += 1
            try:
                yield attempt
            finally:
                if attempt.load_pending:
                    node.loads_pending -= 1

    def _evict(self, node: NodeState, models: list[str]) -> None:
        """The load this request causes will unload these: stop routing to them there now,
        rather than after the next /api/ps."""
        for model in models:
            node.loaded.pop(model, None)
            node.recent.pop(model, None)
            node.runner_options.pop(model, None)
        self.cache.forget(node.name, models)

    def first_byte(self, attempt: Attempt, status: int) -> None:
        node, model = attempt.node, self.profile.model
        if attempt.load_pending:
            node.loads_pending -= 1
            attempt.load_pending = False
        if self.decision is not None:
            self.decision["served_by"] = node.name
        if status != 200:
            return
        previous = node.runner_options.get(model)
        if previous is not None and previous != self.profile.runner_options:
            self.cache.forget(node.name, [model])  # Ollama reloaded the runner: its cache is gone
        node.runner_options[model] = self.profile.runner_options
        node.recent[model] = time.monotonic()

    def finished(self, attempt: Attempt, status: int, tail: bytes) -> None:
        node, profile = attempt.node, self.profile
        if status >= 500:
            self.learner.observe_failure(node.name)
            return
        if status != 200:
            return
        now = time.monotonic()
        self.learner.observe_success(
            node.name,
            profile.model,
            profile.task,
            parse_timings(tail),
            # Ollama's load_duration includes waiting behind other loads: only a load that had
            # none ahead of it measures the load itself.
            clean_load=attempt.cold and attempt.loads_ahead == 0,
            cached_tokens=self.cached_tokens.get(node.name, 0),
            ttft_s=(attempt.first_byte_at - attempt.started)
            if profile.stream and attempt.first_byte_at
            else None,
            elapsed_s=now - attempt.started,
        )
        self.cache.record(profile.model, node.name, profile.prefix_keys)
