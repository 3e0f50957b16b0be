"""Validation of the `embed.*` settings (splitting and coalescing embedding calls) and the
`batch.*` settings (batch embedding jobs and where they are stored)."""

from __future__ import annotations

import os
from pathlib import Path

from sollol_proxy.config.layers import Layers
from sollol_proxy.config.policies import BatchPolicy, EmbedPolicy
from sollol_proxy.config.values import boolean, integer, seconds

MAX_BATCH = 100_000


def default_data_dir(env: dict[str, str] | None = None) -> str:
    """The XDG state directory (`$XDG_STATE_HOME/sollol-proxy`, else ~/.local/state/...)."""
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "sollol-proxy")


def _sizes(layers: Layers, prefix: str, low: int, high: int) -> tuple[int, int]:
    smallest = integer(layers, f"{prefix}.min_batch", low, 1, MAX_BATCH)
    largest = integer(layers, f"{prefix}.max_batch", high, 1, MAX_BATCH)
    if largest < smallest:
        raise layers.error(
            f"{prefix}.max_batch",
            f"must be at least {prefix}.min_batch ({smallest}), got {largest}",
            f"{prefix}.min_batch",
        )
    return smallest, largest


def embed(layers: Layers) -> EmbedPolicy:
    defaults = EmbedPolicy()
    min_batch, max_batch = _sizes(layers, "embed", defaults.min_batch, defaults.max_batch)
    return EmbedPolicy(
        split=boolean(layers, "embed.split", defaults.split),
        split_min_inputs=integer(
            layers, "embed.split_min_inputs", defaults.split_min_inputs, 2, 10**7
        ),
        min_batch=min_batch,
        max_batch=max_batch,
        coalesce=boolean(layers, "embed.coalesce", defaults.coalesce),
        coalesce_max_inputs=integer(
            layers, "embed.coalesce_max_inputs", defaults.coalesce_max_inputs, 2, MAX_BATCH
        ),
    )


def batch(layers: Layers) -> BatchPolicy:
    defaults = BatchPolicy()
    raw_dir = layers.values.get("batch.data_dir")
    if raw_dir is not None and (
        not isinstance(raw_dir, str) or not raw_dir.strip() or "\0" in raw_dir
    ):
        raise layers.error("batch.data_dir", f"expected a directory path, got {raw_dir!r}")
    data_dir = Path(raw_dir.strip()).expanduser() if raw_dir else Path(default_data_dir())
    if (
        raw_dir
        and not data_dir.is_absolute()
        and layers.origins["batch.data_dir"] == (layers.file_origin)
    ):
        data_dir = layers.base_dir / data_dir  # relative to the config file that names it
    min_batch, max_batch = _sizes(layers, "batch", defaults.min_batch, defaults.max_batch)
    per_job = integer(layers, "batch.max_docs_per_job", defaults.max_docs_per_job, 1, 10**9)
    total = integer(layers, "batch.max_docs_total", defaults.max_docs_total, 1, 10**10)
    if total < per_job:
        raise layers.error(
            "batch.max_docs_total",
            f"must be at least batch.max_docs_per_job ({per_job}), got {total}",
            "batch.max_docs_per_job",
        )
    return BatchPolicy(
        data_dir=str(data_dir),
        max_docs_per_job=per_job,
        max_docs_total=total,
        min_batch=min_batch,
        max_batch=max_batch,
        retention=seconds(layers, "batch.retention", defaults.retention),
    )
