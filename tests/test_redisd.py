"""The Redis test fixture itself: a real server that answers, goes away and comes back."""

from __future__ import annotations

from tests.redisd import RedisServer


def test_the_server_stops_and_starts_on_the_same_port(redis_server: RedisServer) -> None:
    assert redis_server.answers()
    redis_server.stop()
    assert not redis_server.answers()
    redis_server.start()
    assert redis_server.answers()
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
