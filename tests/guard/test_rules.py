"""The guard's pure parts: keys, scopes, per-minute windows, the Host rule."""

from __future__ import annotations

import hashlib

import pytest

from sollol_proxy.config import load_config
from sollol_proxy.config.model import ConfigError
from sollol_proxy.guard.hosts import MEMO_LENGTH, MEMO_SIZE, HostCheck
from sollol_proxy.guard.keys import new_key, presented_key
from sollol_proxy.guard.quota import MinuteWindow
from sollol_proxy.guard.scopes import Need, is_loopback, need


def test_a_new_key_and_its_hash() -> None:
    key, digest = new_key()
    assert key.startswith("sollol-") and len(key) > 40
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert new_key()[0] != key


def test_how_a_key_is_presented() -> None:
    assert presented_key({"Authorization": "Bearer abc"}) == "abc"
    assert presented_key({"Authorization": "bearer  abc "}) == "abc"
    assert presented_key({"X-Api-Key": "abc"}) == "abc"  # the Anthropic SDK
    assert presented_key({"Authorization": "Basic abc"}) is None
    assert presented_key({"Authorization": "Bearer " + "a" * 300}) is None
    assert presented_key({}) is None


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("POST", "/api/chat", Need.USER),
        ("GET", "/api/chat", Need.USER),  # a wrong method still gets Ollama's 405
        ("GET", "/api/tags/", Need.USER),
        ("GET", "/v1/models/llama3.2", Need.USER),
        ("GET", "/sollol/nodes", Need.USER),
        ("POST", "/sollol/nodes", Need.ADMIN),
        ("POST", "/api/embed/batch", Need.USER),  # a batch job is inference
        ("GET", "/api/batch-status", Need.USER),
        ("DELETE", "/sollol/batches/0123", Need.ADMIN),
        ("DELETE", "/api/delete", Need.MANAGEMENT),
        ("POST", "/api/pull/", Need.MANAGEMENT),
        ("POST", "/api/blobs/sha256:00", Need.MANAGEMENT),
        ("HEAD", "/api/blobs/sha256:00", Need.MANAGEMENT),
        ("POST", "/api/signout", Need.MANAGEMENT),
        ("POST", "/api/experimental/web_search", Need.ADMIN),  # not listed: admin
        ("GET", "/api/brand-new-route", Need.ADMIN),
    ],
)
def test_which_routes_need_which_scope(method: str, path: str, needed: Need) -> None:
    assert need(method, path) is needed


def test_loopback_peers() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.0.2") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.0.2.7") and not is_loopback(None) and not is_loopback("x")


def test_a_minute_window_counts_the_last_sixty_seconds() -> None:
    window = MinuteWindow()
    window.add(1000.2, 3)
    window.add(1030.5, 5)
    assert window.total(1030.9) == 8
    assert window.total(1060.1) == 5  # the first second has left the window
    # Under a limit of 6 once the 3 from second 1000 expire, at 1060.
    assert window.wait_under(1030.9, 6) == 30
    assert window.wait_under(1030.9, 1) == 60
    window.add(1100.0, 1)  # a bucket is reused, not grown
    assert window.total(1100.0) == 1


def config_with(**settings: object):  # type: ignore[no-untyped-def]
    return load_config(None, env={}, overrides={"nodes": ["a:1"], **settings})


def test_the_host_rule_on_loopback_is_ollamas() -> None:
    check = HostCheck(config_with(**{"listen.host": "127.0.0.1"}))
    assert check.active
    for host in (
        "localhost:11434",
        "127.0.0.1",
        "[::1]:1",
        "10.1.2.3",
        "box.local",
        "x.internal",
        "",
    ):
        assert check.allowed(host), host
    for host in ("evil.example", "evil.example:11434", "8.8.8.8", "localhost.evil.example"):
        assert not check.allowed(host), host


def test_allowed_hosts_turn_the_check_on_anywhere() -> None:
    assert not HostCheck(config_with(**{"listen.host": "0.0.0.0"})).active
    check = HostCheck(
        config_with(**{"listen.host": "0.0.0.0", "listen.allowed_hosts": "ai.example.com,*.lan"})
    )
    assert check.active
    assert check.allowed("ai.example.com:443") and check.allowed("gpu.lan")
    assert not check.allowed("lan") and not check.allowed("example.com")


def test_host_verdicts_are_remembered_within_bounds_and_forgotten_on_reload() -> None:
    check = HostCheck(config_with(**{"listen.host": "127.0.0.1"}))
    # A flood of distinct Host values: the memo never holds more than MEMO_SIZE, and a value
    # longer than MEMO_LENGTH is checked each time, never kept.
    for i in range(3 * MEMO_SIZE):
        assert not check.allowed(f"evil{i}.example")
        assert check.allowed(f"box{i}.local")
        assert len(check.verdicts) <= MEMO_SIZE
    long_host = "a" * MEMO_LENGTH + ".local"
    assert check.allowed(long_host) and long_host not in check.verdicts
    assert not check.allowed("ai.example.com") and check.verdicts["ai.example.com"] is False
    # A reload that allows it: the remembered verdict is not reused.
    check.reconfigure(
        config_with(**{"listen.host": "127.0.0.1", "listen.allowed_hosts": "ai.example.com"})
    )
    assert check.allowed("ai.example.com")


def test_key_configuration_errors_name_the_key() -> None:
    good = {"name": "alice", "sha256": "a" * 64}
    assert config_with(**{"auth.keys": [good]}).auth.keys[0].scope == "user"
    for entry, where in (
        ({**good, "sha256": "xyz"}, "auth.keys[0].sha256"),
        ({**good, "scope": "root"}, "auth.keys[0].scope"),
        ({**good, "name": "a b"}, "auth.keys[0].name"),
        ({**good, "max_priority": 11}, "auth.keys[0].max_priority"),
        ({**good, "colour": 1}, "auth.keys[0].colour"),
    ):
        with pytest.raises(ConfigError) as error:
            config_with(**{"auth.keys": [entry]})
        assert error.value.key == where
    with pytest.raises(ConfigError) as error:
        config_with(**{"auth.keys": [good, {**good, "name": "bob"}]})
    assert error.value.key == "auth.keys[1].sha256"
