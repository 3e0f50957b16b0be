"""Log lines are written off the event loop, in batches, in order, and none is lost: not at exit,
not after a burst of requests, not after SIGTERM (the real process)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sollol_proxy.observe import accesslog
from sollol_proxy.observe.logwriter import BatchingHandler
from sollol_proxy.simulator import SimulatedNode
from tests.conftest import free_port


class Stream:
    """A text stream that remembers each write and the thread that made it."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.threads: set[int] = set()

    def write(self, text: str) -> int:
        self.writes.append(text)
        self.threads.add(threading.get_ident())
        return len(text)

    def flush(self) -> None:
        pass


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.logwriter.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def test_lines_are_written_in_order_in_batches_by_the_writer_thread() -> None:
    stream = Stream()
    handler = BatchingHandler(stream, interval=0.05)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = _logger(handler)
    for n in range(300):
        logger.info("line %d", n)
    assert stream.writes == []  # the caller only queued them
    deadline = threading.Event()
    for _ in range(100):
        if stream.writes:
            break
        deadline.wait(0.02)
    handler.close()
    text = "".join(stream.writes)
    assert text.splitlines() == [f"line {n}" for n in range(300)]
    assert text.endswith("\n")
    assert len(stream.writes) < 10  # batches, not a write per line
    assert threading.get_ident() not in stream.threads or len(stream.threads) == 1


def test_the_writer_thread_sleeps_while_nothing_is_logged() -> None:
    # A quiet proxy (log_level warning) wakes no thread on a timer: the writer makes a pass
    # only for a batch that began.
    passes = 0

    class Counting(BatchingHandler):
        def _write(self) -> None:
            nonlocal passes
            passes += 1
            super()._write()

    stream = Stream()
    handler = Counting(stream, interval=0.01)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = _logger(handler)
    pause = threading.Event()
    pause.wait(0.2)  # twenty intervals
    assert passes == 0
    logger.info("one")
    logger.info("two")
    for _ in range(100):
        if stream.writes:
            break
        pause.wait(0.02)
    assert stream.writes == ["one\ntwo\n"]  # both lines in the batch the first one began
    pause.wait(0.2)
    assert passes == 1
    handler.close()


def test_close_writes_what_is_left_and_arguments_are_read_at_the_call() -> None:
    stream = Stream()
    handler = BatchingHandler(stream, interval=3600)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = _logger(handler)
    state = {"n": 1}
    logger.warning("state %s", state)
    state["n"] = 2  # changed after the call: the line shows what was logged
    handler.close()
    assert "".join(stream.writes) == "WARNING state {'n': 1}\n"


def test_the_access_line_is_not_built_below_info(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    monkeypatch.setattr(accesslog, "access_fields", lambda record: built.append(record) or {})
    logger = logging.getLogger("sollol.access")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        accesslog.log_request(object())  # type: ignore[arg-type]
    finally:
        logger.setLevel(previous)
    assert built == []


CHAT = {
    "model": "llama3.2",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": False,
    "options": {"num_predict": 4},
}


def _text(log: Path) -> str:
    return log.read_text(errors="replace")


async def _start(config: Path, log: Path, url: str) -> asyncio.subprocess.Process:
    with log.open("wb") as out:  # a file: a pipe nobody reads would fill and block the proxy
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sollol_proxy", "-c", str(config), stdout=out, stderr=out
        )
    async with aiohttp.ClientSession() as http:
        for _ in range(400):
            try:
                async with http.get(url + "/sollol/nodes") as response:  # not counted
                    if response.status == 200:
                        return process
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError(_text(log))


async def test_every_request_is_counted_after_a_burst_and_after_sigterm(tmp_path: Path) -> None:
    node = SimulatedNode(name="a", models=["llama3.2:latest"], num_parallel=8, token_delay=0.005)
    await node.start(port=0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "sollol.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": port},
                "nodes": [{"url": node.url, "num_parallel": 8}],
                "log_format": "json",  # log_level info: the access log is on
            }
        )
    )
    log = tmp_path / "proxy.log"
    process = await _start(config, log, url)
    ids: list[str] = []

    async def call(http: aiohttp.ClientSession, path: str, body: dict) -> None:
        async with http.post(url + path, data=orjson.dumps(body)) as response:
            await response.read()
            ids.append(response.headers["X-Sollol-Request-Id"])

    def access() -> list[dict]:
        lines = [orjson.loads(x) for x in _text(log).splitlines() if x.startswith("{")]
        return [line for line in lines if line["logger"] == "sollol.access"]

    try:
        async with aiohttp.ClientSession() as http:
            burst = [
                call(http, "/api/chat", CHAT)
                if n % 3
                else call(http, "/api/chat", {**CHAT, "model": "no-such-model"})
                for n in range(240)
            ]
            await asyncio.gather(*burst)
            async with http.get(url + "/metrics") as response:
                text = (await response.read()).decode()
            counted = sum(
                s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "sollol_requests_total"
            )
            assert counted == 240
            for _ in range(100):  # the writer's next batch
                if len(access()) == 240:
                    break
                await asyncio.sleep(0.05)
            assert sorted(line["request_id"] for line in access()) == sorted(ids)
            # Streams still running when SIGTERM comes finish within the grace period, and
            # their lines are written before the process exits.
            streams = [
                asyncio.create_task(
                    call(
                        http,
                        "/api/generate",
                        {"model": "llama3.2", "prompt": f"s{n}", "options": {"num_predict": 100}},
                    )
                )
                for n in range(40)
            ]
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            await asyncio.gather(*streams)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await node.stop()
    lines = access()
    assert len(ids) == 280
    assert sorted(line["request_id"] for line in lines) == sorted(ids)
    assert sum(line["route"] == "/api/generate" and line["status"] == 200 for line in lines) == 40
