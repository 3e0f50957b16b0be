"""The life of one inference request: schedule, wait for a slot, prefill, emit tokens.

Timing fields follow §5.6: load_duration runs from handler entry to the runner being
scheduled (so it includes a load), and excludes the wait for a parallel slot, which only
total_duration contains: total - load - prompt_eval - eval is the slot wait (plus a little
overhead). prompt_eval_count is the whole prompt, prompt_eval_duration the time spent on
the part the prefix cache did not cover (HEAD llama-server semantics). Decode slows with
the runner's busy slots (``Runner.decode_factor``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sollol_proxy.simulator.gotypes import ApiError, int_option
from sollol_proxy.simulator.kvcache import (
    ASSISTANT_TAG,
    CHARS_PER_TOKEN,
    Slot,
    SlotUse,
    render_chat,
    token_count,
)
from sollol_proxy.simulator.models import SimModel
from sollol_proxy.simulator.scheduler import Runner
from sollol_proxy.simulator.text import tokens_for
from sollol_proxy.simulator.wire import FAULT_ABORT

if TYPE_CHECKING:
    from sollol_proxy.simulator.core import NodeCore

# Fixed metric values for deterministic mode, so identical requests give identical bytes.
_DET_LOAD_NS = 1_000_000
_DET_PROMPT_NS_PER_TOKEN = 100_000
_DET_EVAL_NS_PER_TOKEN = 10_000_000


class Generation:
    """Async context manager around one request that holds (or waits for) a runner.

    Leaving it releases the slot and the runner reference. A client that went away
    (CancelledError from aiohttp's handler cancellation, or a reset while writing) is
    counted in ``node.cancelled``."""

    def __init__(
        self,
        node: NodeCore,
        request: web.Request,
        model: SimModel,
        options: dict[str, Any],
        keep_alive: float | None,
        t0: int,
    ) -> None:
        self.node = node
        self.request = request
        self.model = model
        self.options = options
        self.keep_alive = keep_alive
        self.t0 = t0
        self.runner: Runner | None = None
        self.loaded_now = False
        self.t_loaded = t0
        self.slot_held = False
        self.kv_slot: Slot | None = None
        self.kv_text: list[str] = []  # what the KV slot holds so far
        self.cached_tokens = 0
        self.completed = False
        self.prompt_eval_ns = 1
        self.eval_ns = 1

    async def __aenter__(self) -> Generation:
        self.node._sched.in_flight += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release_slot()
        if self.runner is not None:
            self.node._sched.release(self.runner)
            self.runner = None
        self.node._sched.in_flight -= 1
        if self.completed and exc_type is None:
            self.node.stats.requests += 1
        gone = exc_type is not None and issubclass(
            exc_type, asyncio.CancelledError | ConnectionResetError
        )
        if gone and not self.request.get(FAULT_ABORT):
            self.node.cancelled += 1

    def _release_slot(self) -> None:
        if self.kv_slot is not None and self.runner is not None:
            self.runner.cache.give_back(self.kv_slot, "".join(self.kv_text))
            self.kv_slot = None
        if self.slot_held and self.runner is not None:
            self.runner.release_slot()
            self.slot_held = False

    async def schedule(self) -> None:
        """Fault delays and errors first (they stand for a slow or failing scheduler),
        then scheduleRunner."""
        faults = self.node.faults
        if faults.first_byte_delay > 0:
            await asyncio.sleep(faults.first_byte_delay)
        if faults.status_error is not None:
            raise ApiError(*faults.status_error)
        num_ctx = int_option(self.options, "num_ctx") or self.node.default_num_ctx
        num_ctx = min(num_ctx, self.model.context_length or num_ctx)
        int_option(self.options, "num_predict")  # type check only
        self.runner, self.loaded_now = await self.node._sched.acquire(
            self.model, num_ctx, self.keep_alive
        )
        self.t_loaded = time.monotonic_ns()

    async def acquire_slot(self) -> None:
        assert self.runner is not None
        start = time.monotonic()
        try:
            await self.runner.acquire_slot()
        finally:
            self.node.stats.queue_wait += time.monotonic() - start
        self.slot_held = True

    async def prefill(self, tokens: int) -> None:
        """Evaluate ``tokens`` prompt tokens at prompt_tokens_per_s * speed (None: instant)."""
        start = time.monotonic_ns()
        rate = self.node.prompt_tokens_per_s
        if rate and tokens > 0:
            await asyncio.sleep(tokens / (rate * self.node.speed))
        self.prompt_eval_ns = max(time.monotonic_ns() - start, 1)

    async def embed(self, prompt_tokens: int) -> None:
        """An embedding request's work: a slot, then the prompt (no prefix cache)."""
        await self.acquire_slot()
        await self.prefill(prompt_tokens)
        self.completed = True

    async def tokens(self, prompt: str, n: int) -> AsyncIterator[str]:
        """Acquire a slot and a KV cache slot, prefill the uncached part of the rendered
        prompt, then yield n tokens spaced by token_delay / speed. The slot is released
        after the last token, before the caller writes the final object."""
        await self.acquire_slot()
        assert self.runner is not None
        runner = self.runner
        self.kv_slot, cached = runner.cache.take(prompt)
        self.kv_text = [prompt[: cached * CHARS_PER_TOKEN]]
        total = token_count(prompt)
        self.cached_tokens = cached
        self.node.stats.prompt_tokens += total
        self.node.stats.cached_tokens += cached
        self.node.slot_uses.append(
            SlotUse(self.model.name, self.kv_slot.index, prompt, total, cached)
        )
        await self.prefill(total - cached)
        self.kv_text = [prompt, ASSISTANT_TAG]
        start = time.monotonic_ns()
        delay = self.node.token_delay / self.node.speed
        for i, tok in enumerate(tokens_for(prompt, n)):
            if i and delay > 0:
                await asyncio.sleep(delay * runner.decode_factor(self.node.batch_slowdown))
            self.kv_text.append(tok)
            yield tok
        self.kv_text.append("\n")
        self.eval_ns = max(time.monotonic_ns() - start, 1)
        self.completed = True
        self._release_slot()

    async def collect(self, seed_text: str, n: int) -> list[str]:
        return [tok async for tok in self.tokens(seed_text, n)]

    def load_duration(self) -> int:
        if self.node.deterministic:
            return _DET_LOAD_NS
        return max(self.t_loaded - self.t0, 1)

    def metrics(self, prompt_count: int, eval_count: int) -> dict[str, int]:
        """api.Metrics in Go field order."""
        load = self.load_duration()
        if self.node.deterministic:
            prompt_ns = prompt_count * _DET_PROMPT_NS_PER_TOKEN
            eval_ns = eval_count * _DET_EVAL_NS_PER_TOKEN
            total = load + prompt_ns + eval_ns + 250_000
        else:
            prompt_ns, eval_ns = self.prompt_eval_ns, self.eval_ns
            total = max(time.monotonic_ns() - self.t0, load + prompt_ns + eval_ns)
        return {
            "total_duration": total,
            "load_duration": load,
            "prompt_eval_count": prompt_count,
            "prompt_eval_duration": prompt_ns,
            "eval_count": eval_count,
            "eval_duration": eval_ns,
        }

    def embed_metrics(self, prompt_count: int) -> dict[str, int]:
        load = self.load_duration()
        total = (
            load + 2_000_000
            if self.node.deterministic
            else max(time.monotonic_ns() - self.t0, load)
        )
        return {"total_duration": total, "load_duration": load, "prompt_eval_count": prompt_count}


def chat_prompt(messages: list[Any]) -> str:
    """The text a chat 'renders' to: what the token count, the prefix cache and the
    output derive from (see kvcache)."""
    return render_chat(messages)
