"""One structured access-log line per request, plain or JSON; node state changes logged once."""

from __future__ import annotations

import asyncio
import logging
import sys

import aiohttp
import orjson
import pytest

from sollol_proxy.observe.logformat import JsonFormatter
from sollol_proxy.simulator import SimulatedNode
from tests.conftest import ClusterFactory, eventually, free_port

MODEL = "llama3.2:latest"
CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sollol.access"]


async def test_one_line_per_request_with_every_field(
    cluster: ClusterFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sollol.access")
    made = await cluster(dict(name="a", models=[MODEL]))
    async with http.post(made.url + "/api/chat", data=CHAT) as response:
        final = orjson.loads(await response.read())
        request_id = response.headers["X-Sollol-Request-Id"]
    async with http.get(made.url + "/sollol/stats") as response:
        await response.read()  # the proxy's own endpoints are not logged
    await eventually(lambda: len(access_records(caplog)) == 1)
    record = access_records(caplog)[0]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["request_id"] == request_id
    assert fields["client"] == "127.0.0.1"
    assert (fields["method"], fields["route"], fields["model"]) == ("POST", "/api/chat", MODEL)
    assert (fields["node"], fields["status"], fields["outcome"]) == ("a", 200, "ok")
    assert fields["reason"] == "cold_load" and fields["routing"].startswith("performance: ")
    assert fields["tokens_in"] == final["prompt_eval_count"]
    assert fields["tokens_out"] == final["eval_count"]
    assert fields["queue_ms"] == 0 and fields["failovers"] == 0
    assert fields["duration_ms"] >= fields["ttft_ms"] >= 0
    # Plain text: the same fields as key=value, values with spaces quoted.
    message = record.getMessage()
    assert message.startswith(f"request_id={request_id} client=127.0.0.1 method=POST ")
    assert "node=a status=200 outcome=ok" in message and "reason=cold_load" in message
    assert 'routing="performance: ' in message
    # JSON: the same fields as top-level keys.
    line = orjson.loads(JsonFormatter().format(record))
    assert line["level"] == "info" and line["logger"] == "sollol.access"
    assert {k: line[k] for k in fields} == fields


async def test_node_state_changes_are_logged_once(
    cluster: ClusterFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sollol.health")
    made = await cluster(dict(name="a", models=[MODEL]), dict(name="b", models=[MODEL]))
    made.node("b").faults.refuse = True
    await eventually(lambda: not made.fleet.nodes["b"].healthy)
    await asyncio.sleep(1.0)  # five more failed probes at 0.2 s
    made.node("b").faults.refuse = False
    # Back once a probe answers (its first drop-out: no waiting out the ejection): one trial
    # request brings it up.
    await eventually(lambda: made.fleet.may_take(made.fleet.nodes["b"]), within=15)
    body = b'{"model":"llama3.2","prompt":"trial","stream":false}'
    async with http.post(
        made.url + "/api/generate", data=body, headers={"X-Sollol-Node": "b"}
    ) as response:
        assert response.status == 200

    def changes() -> list[str]:
        return [
            r.getMessage().split(":")[1].strip()
            for r in caplog.records
            if r.name == "sollol.health" and r.getMessage().startswith("node b: ")
        ]

    # The trial's end is noted once its answer is over: waited for, not slept for.
    await eventually(lambda: "half_open -> up" in changes())
    # One line per change of state (up at startup, down, a trial, up), none per failed probe.
    assert changes() == ["down -> up", "up -> down", "down -> half_open", "half_open -> up"]


async def test_json_log_format_makes_every_line_json() -> None:
    node = SimulatedNode(name="a", models=[MODEL], deterministic=True)
    await node.start(port=0)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sollol_proxy",
        "--node",
        node.url,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        env={"SOLLOL_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.post(f"http://127.0.0.1:{port}/api/chat", data=CHAT) as r:
                        assert r.status == 200
                        request_id = r.headers["X-Sollol-Request-Id"]
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the proxy never answered")
    finally:
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
        await node.stop()
    lines = [orjson.loads(line) for line in stderr.decode().splitlines() if line.strip()]
    assert all({"time", "level", "logger"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "sollol.access"]
    assert len(access) == 1 and access[0]["request_id"] == request_id
    assert access[0]["node"] == node.url.split("//")[1] and access[0]["status"] == 200
    assert any(line["logger"] == "sollol.app" and "message" in line for line in lines)
