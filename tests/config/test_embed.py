"""The `embed.*` and `batch.*` settings: defaults, where the job store goes, and errors that
name the origin, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from sollol_proxy.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sollol.yaml"
    path.write_text(text)
    return path


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    config = load_config(None, env={"SOLLOL_NODES": "a"})
    assert (config.embed.split, config.embed.split_min_inputs) == (True, 32)
    assert (config.embed.min_batch, config.embed.max_batch) == (8, 256)
    assert config.embed.coalesce is False
    assert config.batch.data_dir == str(tmp_path / "state" / "sollol-proxy")
    assert (config.batch.max_docs_per_job, config.batch.max_docs_total) == (100_000, 1_000_000)
    assert config.batch.retention == 7 * 86400
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = load_config(None, env={"SOLLOL_NODES": "a"})
    assert home.batch.data_dir == str(tmp_path / "home" / ".local" / "state" / "sollol-proxy")


def test_settings_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "nodes: [a]\nembed: {split_min_inputs: 64, min_batch: 4, max_batch: 64, coalesce: true}\n"
        "batch: {data_dir: jobs, max_docs_per_job: 10, max_docs_total: 20, retention: 1h}\n",
    )
    config = load_config(path, env={})
    assert (config.embed.split_min_inputs, config.embed.max_batch) == (64, 64)
    assert config.embed.coalesce
    assert config.batch.data_dir == str(tmp_path / "jobs")  # relative to the file that names it
    assert (config.batch.max_docs_total, config.batch.retention) == (20, 3600)
    assert config.to_dict()["batch"]["data_dir"] == str(tmp_path / "jobs")
    assert config.to_dict()["embed"]["coalesce"] is True
    from_env = load_config(path, env={"SOLLOL_DATA_DIR": "/var/lib/sollol"})
    assert from_env.batch.data_dir == "/var/lib/sollol"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("embed: {split: perhaps}", "embed.split: expected true or false"),
        ("embed: {split_min_inputs: 1}", "embed.split_min_inputs: expected an integer from 2"),
        (
            "embed: {min_batch: 64, max_batch: 8}",
            "embed.max_batch: must be at least embed.min_batch (64), got 8",
        ),
        ("embed: {window: 1ms}", "embed.window: unknown key"),
        ("batch: {data_dir: ''}", "batch.data_dir: expected a directory path, got ''"),
        (
            "batch: {max_docs_per_job: 10, max_docs_total: 5}",
            "batch.max_docs_total: must be at least batch.max_docs_per_job (10), got 5",
        ),
        ("batch: {retention: forever}", "batch.retention: expected seconds or a duration"),
    ],
)
def test_errors_name_origin_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, f"nodes: [a]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: {expected}"), str(info.value)
