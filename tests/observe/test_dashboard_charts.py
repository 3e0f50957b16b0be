"""The dashboard's charts in headless Chromium: plotted points for requests, TTFT and each node,
read from the SVG the page's script drew. A screenshot is kept in build/test-artifacts/."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path

import aiohttp
import orjson
import pytest

from sollol_proxy.app import PROXY
from sollol_proxy.observe import history
from tests.conftest import ClusterFactory, eventually
from tests.observe.test_dashboard import CHROMIUM_FLAGS, rendered_dom

MODEL = "llama3.2:latest"
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


@pytest.fixture(autouse=True)
def one_second_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "BUCKET_S", 1.0)
    monkeypatch.setattr(history, "SAMPLE_S", 0.2)


def points(dom: str, series: str) -> int:
    """The plotted (non-null) points of a chart's polylines, from their data attributes."""
    svg = re.search(rf'<svg[^>]*data-series="{series}"[^>]*>(.*?)</svg>', dom, re.S)
    assert svg, f"no chart {series}"
    return sum(int(n) for n in re.findall(r'<polyline[^>]*data-points="(\d+)"', svg.group(1)))


async def screenshot(url: str, path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium is not None  # rendered_dom already skipped or failed without it
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        process = await asyncio.create_subprocess_exec(
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=8000",
            "--window-size=1280,2200",
            f"--screenshot={path}",
            url,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.wait_for(process.wait(), 90)
    assert process.returncode == 0
    assert (await asyncio.to_thread(path.stat)).st_size > 0


async def test_charts_plot_requests_ttft_and_every_node(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="node-alpha", models=[MODEL], num_parallel=2),
        dict(name="node-beta", models=[MODEL]),
    )
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    for _ in range(4):
        async with http.post(made.url + "/api/chat", data=orjson.dumps(body)) as response:
            assert response.status == 200
            await response.read()
    kept = made.proxy.runner.app[PROXY].history
    await eventually(lambda: sum(v or 0 for v in kept.to_json(60)["requests_per_s"]["ok"]) >= 4)

    def believed_everywhere() -> bool:  # each node's belief sampled at least once
        nodes = kept.to_json(60)["nodes"]
        return len(nodes) == 2 and all(any(n["slots_believed"]) for n in nodes)

    await eventually(believed_everywhere)

    dom = await rendered_dom(made.url + "/dashboard")
    assert points(dom, "requests") > 0
    assert points(dom, "ttft") > 0
    for node in ("node-alpha", "node-beta"):
        row = re.search(rf'<svg[^>]*data-node="{node}"[^>]*>(.*?)</svg>', dom, re.S)
        assert row, node
        assert re.search(r'data-name="slots_believed"[^>]*data-points="[1-9]', row.group(1))
    assert '<span id="charts-error"></span>' in dom or 'id="charts-error"></' in dom

    await screenshot(made.url + "/dashboard", ARTIFACTS / "dashboard.png")
