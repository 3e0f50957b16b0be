"""NodeCore: what a simulated node is apart from its socket, and all the route handlers see.

The model store, the settings, the scheduler, the fault knobs and the observation lists.
``SimulatedNode`` (node.py) adds the listener and the request dispatch on top; route modules
depend on this module only, so imports point one way: node -> routing -> routes -> core.
"""

from __future__ import annotations

from collections.abc import Iterable

from sollol_proxy.simulator.gotypes import (
    format_local,
    format_utc,
    now_ns,
    parse_go_time,
    parse_keep_alive,
)
from sollol_proxy.simulator.kvcache import SlotUse, SlotView
from sollol_proxy.simulator.models import SimModel, default_catalog, parse_name
from sollol_proxy.simulator.scheduler import NodeStats, Scheduler
from sollol_proxy.simulator.wire import Faults, RecordedRequest, RecordedResponse

DETERMINISTIC_CREATED_AT = "2026-01-01T00:00:00Z"
DEFAULT_NUM_CTX = 4096


class NodeCore:
    def __init__(
        self,
        name: str = "node",
        models: Iterable[str | SimModel] = (),
        catalog: dict[str, SimModel] | None = None,
        version: str = "0.33.0-rc2",
        num_parallel: int = 1,
        max_loaded_models: int = 3,
        vram_bytes: int = 24 * 2**30,
        load_delay: float = 0.0,
        token_delay: float = 0.0,
        prompt_tokens_per_s: float | None = None,
        speed: float = 1.0,
        load_bytes_per_s: float | None = None,
        keep_alive: float | str = 300.0,
        deterministic: bool = False,
        bind_host: str = "127.0.0.1",
        default_num_ctx: int = DEFAULT_NUM_CTX,
        batch_slowdown: float = 0.0,
    ) -> None:
        self.name = name
        self.catalog = dict(catalog) if catalog is not None else default_catalog()
        self._catalog_keys = {m.key: m for m in self.catalog.values()}
        self.version = version
        self.token_delay = token_delay
        self.prompt_tokens_per_s = prompt_tokens_per_s
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed  # divides prefill and decode time: a faster GPU
        if batch_slowdown < 0:
            raise ValueError("batch_slowdown must not be negative")
        self.batch_slowdown = batch_slowdown
        self.deterministic = deterministic
        self.bind_host = bind_host
        self.default_num_ctx = default_num_ctx
        default_keep = parse_keep_alive(keep_alive)
        self._sched = Scheduler(
            num_parallel=num_parallel,
            max_loaded_models=max_loaded_models,
            vram_bytes=vram_bytes,
            load_delay=load_delay,
            default_keep_alive=300.0 if default_keep is None else default_keep,
            load_bytes_per_s=load_bytes_per_s,
        )
        self._models: dict[str, SimModel] = {}
        for m in models:
            self.add_model(
                m if isinstance(m, SimModel) else (self.catalog_lookup(m) or SimModel(m))
            )
        self.blobs: dict[str, int] = {}  # digest -> size; bytes are never kept
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self.responses: list[RecordedResponse] = []
        self.slot_uses: list[SlotUse] = []
        self.cancelled = 0

    # ------------------------------------------------------------------ model store

    def lookup(self, name: str) -> SimModel | None:
        parsed = parse_name(name)
        return self._models.get(parsed.key) if parsed else None

    def catalog_lookup(self, name: str) -> SimModel | None:
        parsed = parse_name(name)
        return self._catalog_keys.get(parsed.key) if parsed else None

    def add_model(self, model: SimModel) -> None:
        self._models[model.key] = model

    def remove_model(self, name: str) -> bool:
        parsed = parse_name(name)
        return parsed is not None and self._models.pop(parsed.key, None) is not None

    def sorted_models(self) -> list[SimModel]:
        """Newest modified_at first, like sortListModelResponses."""
        return sorted(self._models.values(), key=lambda m: (-parse_go_time(m.modified_at), m.name))

    def has_model(self, name: str) -> bool:
        return self.lookup(name) is not None

    def model_names(self) -> list[str]:
        return [m.name for m in self.sorted_models()]

    # ------------------------------------------------------------------ observation

    def loaded_models(self) -> list[str]:
        return [r.model.name for r in self._sched.loaded()]

    def in_flight(self) -> int:
        return self._sched.in_flight

    def slot_demand(self) -> int:
        """Requests holding or waiting for one loaded model's parallel slots, the most over the
        models: what the slots were asked for, without the requests still loading a model or
        writing out their final object after their slot was freed (both in `in_flight`)."""
        return max((r.busy + r.waiting for r in self._sched.loaded()), default=0)

    @property
    def stats(self) -> NodeStats:
        return self._sched.stats

    @property
    def num_parallel(self) -> int:
        """OLLAMA_NUM_PARALLEL as the next load will use it."""
        return self._sched.num_parallel

    def slots(self, model: str) -> tuple[SlotView, ...]:
        """The KV slots of ``model``'s runner: what each holds and whether it is busy.
        Empty when the model is not loaded."""
        wanted = self.lookup(model)
        runner = self._sched.runners.get(wanted.key) if wanted else None
        return runner.cache.view() if runner else ()

    def created_at(self) -> str:
        return DETERMINISTIC_CREATED_AT if self.deterministic else format_utc(now_ns())

    def now_local(self) -> str:
        return format_local(now_ns())
