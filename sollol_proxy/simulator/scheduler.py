"""Runner residency and slots, after Ollama's scheduler (§5).

One load at a time per node (``processPending`` is a single goroutine), an already loaded
runner is used without queueing, requests beyond the runner's slots wait on its semaphore
without limit (no 503), idle runners expire after their session duration, and a model that
does not fit (sum of loaded sizes above ``vram_bytes``, or ``max_loaded_models`` reached)
evicts runners in ``findRunnerToUnload`` order. A runner chosen for eviction or reload takes
no new requests while it drains; they queue for the next load instead.

A runner gets ``num_parallel`` slots, fixed when it loads; models without the completion
capability and the families in ``SINGLE_SLOT_FAMILIES`` get one (§5.1). ``restart`` drops
every runner, so the next load uses the new value, as restarting ``ollama serve`` does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, fields

from sollol_proxy.simulator.gotypes import FOREVER, expiry_ns, now_ns
from sollol_proxy.simulator.kvcache import PrefixCache
from sollol_proxy.simulator.models import SimModel
from sollol_proxy.wire.slots import SINGLE_SLOT_FAMILIES


def runner_slots(model: SimModel, num_parallel: int) -> int:
    """The slots a runner for ``model`` gets when the node runs with ``num_parallel``."""
    if "completion" not in model.capabilities or model.family in SINGLE_SLOT_FAMILIES:
        return 1
    return max(num_parallel, 1)


@dataclass
class NodeStats:
    """Counters for benchmarks (``node.stats``); ``reset()`` zeroes them."""

    requests: int = 0  # completed chat/generate/embed requests
    loads: int = 0  # runner loads, reloads included
    evictions: int = 0  # runners unloaded to make room (findRunnerToUnload)
    prompt_tokens: int = 0  # sum of prompt_eval_count over chat/generate
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache
    queue_wait: float = 0.0  # seconds spent waiting for a parallel slot
    load_wait: float = 0.0  # seconds spent waiting for loads (lock, evictions, the load)

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)


@dataclass(eq=False)
class Runner:
    model: SimModel
    num_ctx: int
    num_parallel: int
    session_duration: float
    sem: asyncio.Semaphore
    ref_count: int = 0
    expires_at_ns: int | None = None  # None until the runner first goes idle (§3.4)
    loading: bool = True
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    evicting: bool = False  # chosen for eviction or reload: no new requests
    busy: int = 0  # slots held by requests (prefilling or decoding)
    waiting: int = 0  # requests waiting on the semaphore for a slot
    cache: PrefixCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = PrefixCache(self.num_parallel)

    async def acquire_slot(self) -> None:
        """llama_server.go's ``s.sem.Acquire``: wait, without limit, for a free slot."""
        self.waiting += 1
        try:
            await self.sem.acquire()
        finally:
            self.waiting -= 1
        self.busy += 1

    def release_slot(self) -> None:
        self.busy -= 1
        self.sem.release()

    def decode_factor(self, batch_slowdown: float) -> float:
        """How much longer a decode step takes than with one busy slot: the slots decode in
        one batch, so each token costs ``1 + batch_slowdown * (busy - 1)`` times more."""
        return 1.0 + batch_slowdown * max(self.busy - 1, 0)

    @property
    def size(self) -> int:
        return self.model.size

    def sort_key(self) -> tuple[float, str]:
        # findRunnerToUnload: shortest session first (forever sorts last), then model path.
        return (self.session_duration, self.model.key)


class Scheduler:
    def __init__(
        self,
        *,
        num_parallel: int,
        max_loaded_models: int,
        vram_bytes: int,
        load_delay: float,
        default_keep_alive: float,
        load_bytes_per_s: float | None = None,
    ) -> None:
        self.num_parallel = num_parallel
        self.max_loaded_models = max_loaded_models
        self.vram_bytes = vram_bytes
        self.load_delay = load_delay
        self.load_bytes_per_s = load_bytes_per_s
        self.stats = NodeStats()
        self.default_keep_alive = default_keep_alive
        self.runners: dict[str, Runner] = {}
        self.in_flight = 0
        self._load_lock = asyncio.Lock()  # asyncio.Lock is FIFO, like pendingReqCh

    # ------------------------------------------------------------------ acquire / release

    async def acquire(
        self, model: SimModel, num_ctx: int, keep_alive: float | None
    ) -> tuple[Runner, bool]:
        """Reference a runner for the model, loading it if needed. Returns (runner, loaded_now).
        The caller must call ``release`` exactly once, also on cancellation."""
        runner = self._usable(model, num_ctx)
        if runner is not None:
            self._use(runner, keep_alive)
            return runner, False
        start = time.monotonic()
        try:
            return await self._acquire_slow(model, num_ctx, keep_alive)
        finally:
            self.stats.load_wait += time.monotonic() - start

    async def _acquire_slow(
        self, model: SimModel, num_ctx: int, keep_alive: float | None
    ) -> tuple[Runner, bool]:
        async with self._load_lock:
            runner = self._usable(model, num_ctx)
            if runner is not None:
                self._use(runner, keep_alive)
                return runner, False
            stale = self.runners.get(model.key)
            if stale is not None:  # needsReload (§5.4): drain, then replace
                stale.session_duration = 0
                stale.evicting = True
                await self._drain_and_unload(stale)
            await self._make_room(model)
            duration = keep_alive if keep_alive is not None else self.default_keep_alive
            parallel = runner_slots(model, self.num_parallel)
            runner = Runner(model, num_ctx, parallel, duration, asyncio.Semaphore(parallel))
            runner.ref_count = 1
            self.runners[model.key] = runner
            self.stats.loads += 1
            task = asyncio.ensure_future(self._load(runner))
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                # A client that goes away does not abort a load in progress; finish it under
                # the lock so later requests find the runner ready, then drop our reference.
                await task
                self.release(runner)
                raise
            return runner, True

    def load_time(self, model: SimModel) -> float:
        """load_delay, plus the weights' transfer time when load_bytes_per_s is set."""
        rate = self.load_bytes_per_s
        return self.load_delay + (model.size / rate if rate else 0.0)

    async def _load(self, runner: Runner) -> None:
        await asyncio.sleep(self.load_time(runner.model))
        runner.loading = False

    def _usable(self, model: SimModel, num_ctx: int) -> Runner | None:
        runner = self.runners.get(model.key)
        if runner is None or runner.loading or runner.evicting or runner.num_ctx != num_ctx:
            return None
        if runner.session_duration == 0 and runner.ref_count == 0:
            return None  # already being expired
        return runner

    def _use(self, runner: Runner, keep_alive: float | None) -> None:
        runner.ref_count += 1
        runner.idle.clear()
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None
        if keep_alive is not None:  # absent keep_alive keeps the runner's last duration
            runner.session_duration = keep_alive

    def release(self, runner: Runner) -> None:
        runner.ref_count -= 1
        if runner.ref_count > 0:
            return
        runner.idle.set()
        if self.runners.get(runner.model.key) is not runner:
            return  # already unloaded (restart): no expiry to schedule
        now = now_ns()
        runner.expires_at_ns = expiry_ns(now, runner.session_duration)
        if runner.session_duration == 0:
            self._unload(runner)
        elif runner.session_duration != FOREVER:
            loop = asyncio.get_running_loop()
            runner.timer = loop.call_later(runner.session_duration, self._expire, runner)

    def _expire(self, runner: Runner) -> None:
        runner.timer = None
        if runner.ref_count == 0:
            self._unload(runner)

    def _unload(self, runner: Runner) -> None:
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None
        if self.runners.get(runner.model.key) is runner:
            del self.runners[runner.model.key]

    def restart(self, num_parallel: int) -> None:
        """Forget every runner (and its KV cache); later loads get ``num_parallel`` slots."""
        for runner in list(self.runners.values()):
            self._unload(runner)
        self.num_parallel = num_parallel

    def expire_now(self, model: SimModel) -> None:
        """expireRunner (unload request, §5.3): unload now if idle, else when requests end."""
        runner = self.runners.get(model.key)
        if runner is None:
            return
        runner.session_duration = 0
        runner.expires_at_ns = now_ns()
        if runner.ref_count == 0 and not runner.loading:
            self._unload(runner)

    # ------------------------------------------------------------------ eviction

    async def _drain_and_unload(self, runner: Runner) -> None:
        if runner.ref_count > 0:
            await runner.idle.wait()
        self._unload(runner)

    async def _make_room(self, model: SimModel) -> None:
        while self.runners:
            used = sum(r.size for r in self.runners.values())
            too_many = len(self.runners) >= self.max_loaded_models
            no_fit = used + model.size > self.vram_bytes
            if not (too_many or no_fit):
                return
            ordered = sorted(self.runners.values(), key=Runner.sort_key)
            victim = next((r for r in ordered if r.ref_count == 0), ordered[0])
            victim.session_duration = 0
            victim.evicting = True
            self.stats.evictions += 1
            await self._drain_and_unload(victim)

    def loaded(self) -> list[Runner]:
        return list(self.runners.values())
