"""Policy settings that the fleet and the forwarder apply: part of the configuration, so they live
with it, and the packages that apply them import them from here."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Priors:
    """Starting beliefs about a node before it has answered anything."""

    prefill_tokens_per_s: float = 1000.0
    decode_tokens_per_s: float = 30.0
    load_seconds: float = 2.0  # fixed part of a model load
    load_bytes_per_s: float = 1.5e9  # plus the model's size read at this rate
    output_tokens: float = 256.0


@dataclass(frozen=True)
class OutlierPolicy:
    consecutive_failures: int = 3  # failures in a row that eject a reachable node
    base_ejection: float = 5.0  # the first ejection's length; doubled by each one in a row
    max_ejection: float = 300.0  # cap on an ejection; also how long `up` forgives past ejections
    busy_cooldown: float = 2.0  # no new work after a queue-full 503 for this long


@dataclass(frozen=True)
class RetryPolicy:
    budget_ratio: float = 0.2  # retries in progress, as a share of requests in progress
    # retries always allowed in progress, whatever the ratio: Envoy uses 3, but a proxy for
    # LLMs runs few, long requests, so one node failing its share of them must fit
    min_concurrent: int = 10
    backoff_base: float = 0.025  # the first retry waits up to this long (full jitter) ...
    backoff_max: float = 0.25  # ... doubled for each further retry, up to this

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1-based): full jitter (AWS, Envoy)."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (retry - 1))
        return rng.uniform(0, ceiling)


@dataclass(frozen=True)
class EmbedPolicy:
    """Embedding calls: when one is cut into sub-batches for several nodes, and when small
    concurrent ones are merged into one upstream call (see `embed/`)."""

    split: bool = True
    split_min_inputs: int = 32  # a call with fewer inputs goes whole to one node
    min_batch: int = 8  # a split's sub-batches hold at least this many inputs ...
    max_batch: int = 256  # ... and at most this many
    coalesce: bool = False
    coalesce_max_inputs: int = 256  # inputs of one merged upstream call


@dataclass(frozen=True)
class BatchPolicy:
    """Batch embedding jobs (`POST /api/embed/batch`), stored on disk until done."""

    data_dir: str = ""  # where the job database lives; "" is the user's state directory
    max_docs_per_job: int = 100_000
    max_docs_total: int = 1_000_000  # documents stored over all jobs, finished ones included
    min_batch: int = 16  # documents per upstream call, at least (unless fewer are left) ...
    max_batch: int = 256  # ... and at most
    retention: float = 7 * 86400.0  # a finished job and its results are deleted after this


@dataclass(frozen=True)
class StatePolicy:
    """Where the state that replicas of the proxy share lives: in this process only (`local`),
    or in Redis, so that several replicas behave as one (slots, queue order, health, learning)."""

    backend: str = "local"  # local or redis
    redis_url: str = ""  # redis://, rediss:// or unix://; required with backend redis
    key_prefix: str = "sollol:"  # every key the proxy writes starts with this
    lease_ttl: float = 10.0  # a slot lease not renewed for this long is given back
    timeout: float = 0.25  # one Redis operation; beyond it the replica uses local state
