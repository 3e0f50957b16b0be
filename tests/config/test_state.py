"""The `state.*` settings: local by default, Redis when its address is given, and errors that
name the origin and the key without printing a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from sollol_proxy.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sollol.yaml"
    path.write_text(text)
    return path


def test_local_by_default() -> None:
    config = load_config(None, env={"SOLLOL_NODES": "a"})
    assert config.state.backend == "local"
    assert (config.state.key_prefix, config.state.lease_ttl) == ("sollol:", 10.0)


def test_the_redis_address_alone_turns_redis_on() -> None:
    env = {"SOLLOL_NODES": "a", "SOLLOL_REDIS_URL": "redis://cache:6379/2"}
    config = load_config(None, env=env)
    assert (config.state.backend, config.state.redis_url) == ("redis", "redis://cache:6379/2")
    local = load_config(None, env={**env, "SOLLOL_STATE_BACKEND": "local"})
    assert local.state.backend == "local"


def test_settings_from_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "nodes: [a]\nstate:\n  backend: redis\n  redis_url: unix:///run/redis.sock\n"
        "  key_prefix: 'team-a:'\n  lease_ttl: 5s\n  timeout: 100ms\n",
    )
    state = load_config(path, env={}).state
    assert (state.redis_url, state.key_prefix) == ("unix:///run/redis.sock", "team-a:")
    assert (state.lease_ttl, state.timeout) == (5.0, 0.1)


@pytest.mark.parametrize(
    ("yaml", "key", "problem"),
    [
        ("backend: etcd", "state.backend", "expected one of local, redis, got 'etcd'"),
        ("backend: redis", "state.backend", "redis needs state.redis_url"),
        ("redis_url: http://x:6379", "state.redis_url", "expected a redis://"),
        ("redis_url: 'redis://:6379'", "state.redis_url", "no host in"),
        ("redis_url: 'redis://x:port'", "state.redis_url", "Port could not be cast"),
        ("redis_url: 'unix://'", "state.redis_url", "needs a socket path"),
        ("redis_url: 7", "state.redis_url", "expected a redis:// URL, got 7"),
        ("key_prefix: 'a b'", "state.key_prefix", "expected 1 to 64 letters"),
        ("lease_ttl: 0", "state.lease_ttl", "must be greater than zero"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, yaml: str, key: str, problem: str) -> None:
    path = write(tmp_path, f"nodes: [a]\nstate:\n  {yaml}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert (caught.value.origin, caught.value.key) == (str(path), key)
    assert problem in caught.value.problem


def test_a_password_is_never_printed(tmp_path: Path) -> None:
    env = {"SOLLOL_NODES": "a", "SOLLOL_REDIS_URL": "http://user:s3cret@cache:6379"}
    with pytest.raises(ConfigError) as caught:
        load_config(None, env=env)
    assert caught.value.origin == "environment SOLLOL_REDIS_URL"
    assert "s3cret" not in str(caught.value)
    good = load_config(None, env={**env, "SOLLOL_REDIS_URL": "redis://user:s3cret@cache:6379"})
    assert "s3cret" not in str(good.to_dict())
    assert good.state.redis_url == "redis://user:s3cret@cache:6379"
