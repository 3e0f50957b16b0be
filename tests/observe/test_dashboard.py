"""/dashboard in a real headless browser against a running proxy with simulated nodes.

Debian's chromium (`.ci/run` installs it) runs the page's JavaScript and dumps the DOM; the
assertions are on what the script rendered from /sollol/dashboard, not on the page's source.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

import aiohttp
import orjson
import pytest

from sollol_proxy.observe.dashboard import _decision
from tests.conftest import ClusterFactory, chromium, eventually

MODEL = "llama3.2:latest"
REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium's own background connections fail on a closed network and the
    # page's requests are refused with them.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


async def rendered_dom(url: str) -> str:
    browser = chromium()
    with tempfile.TemporaryDirectory() as profile:
        process = await asyncio.create_subprocess_exec(
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=8000",
            "--dump-dom",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            stdout, _ = await asyncio.wait_for(process.communicate(), 90)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
    assert process.returncode == 0
    return stdout.decode()


async def test_dashboard_renders_nodes_decisions_and_alerts(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="node-alpha", models=[MODEL], num_parallel=2),
        dict(name="node-beta", models=[MODEL]),
    )
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with http.post(made.url + "/api/chat", data=orjson.dumps(body)) as response:
        assert response.status == 200
        served = response.headers["X-Sollol-Node"]
        reason = response.headers["X-Sollol-Route"].removeprefix("performance: ")
    made.node("node-beta").faults.refuse = True
    await eventually(lambda: not made.fleet.nodes["node-beta"].healthy)

    async with http.get(made.url + "/dashboard") as response:
        source = (await response.read()).decode()
    dom = await rendered_dom(made.url + "/dashboard")
    for text in ('data-node="node-alpha"', 'data-node="node-beta"', reason, "cold_load"):
        assert text not in source  # only the page's script can have put it there
        assert text in dom, text
    assert '<span class="badge down">down</span>' in dom  # node-beta
    assert "critical · down · node-beta is down" in dom
    assert f'<td>{served}</td><td class="cat">cold_load</td>' in dom
    assert "<tr><td>5</td><td>0</td>" in dom  # the queue: priority 5 seen, nobody waiting
    assert '<span id="error"></span>' in dom  # every refresh succeeded


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("true", "1 failed")])
async def test_without_chromium_the_browser_test_skips_except_in_ci(
    tmp_path: Path, ci: str, outcome: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", __file__),
        *("-k", "renders_nodes"),
        env={**os.environ, "PATH": str(tmp_path), "CI": ci},  # no chromium on this PATH
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 120)
    report = stdout.decode()
    assert outcome in report, report
    assert "chromium is not installed, so the browser tests cannot run" in report


def test_a_decision_counts_the_candidates_not_priced_exactly_too() -> None:
    shown = {"candidates": [{"node": "a"}, {"node": "b"}], "others": ["c", "d", "e"]}
    assert _decision(shown)["candidates"] == 5
    assert _decision({"candidates": [{"node": "a"}]})["candidates"] == 1
