"""A real `redis-server` for the tests of shared state: started on a free port in a temporary
directory, stopped and started again at will (Redis going away mid-run), killed at teardown."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def redis_binary() -> str:
    """Debian's redis-server. Without it the Redis tests skip and say why; in CI (`CI=true`,
    set by `.ci/run` after installing it) a missing server is a failure instead."""
    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not installed, so the shared-state tests cannot run"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true: that is a failure there")
        pytest.skip(reason)
    return path


class RedisServer:
    """One redis-server process; `stop()` and `start()` keep its port, so clients reconnect."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Gone at once, as a crashed or restarted Redis is (no shutdown save)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
