"""Batch jobs in /metrics, in the /sollol/dashboard JSON and on the /dashboard page (rendered
by headless Chromium, like tests/observe/test_dashboard.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from tests.conftest import ClusterFactory
from tests.observe.test_admin import BATCH_JOB, check
from tests.observe.test_dashboard import rendered_dom
from tests.observe.test_metrics import scrape, total

MODEL = "all-minilm"


async def _submit(http: aiohttp.ClientSession, url: str, payload: Any) -> str:
    async with http.post(url + "/api/embed/batch", data=orjson.dumps(payload)) as response:
        assert response.status == 202
        return orjson.loads(await response.read())["id"]


async def _over(http: aiohttp.ClientSession, url: str, job: str) -> None:
    for _ in range(400):
        async with http.get(f"{url}/sollol/batches/{job}") as response:
            if orjson.loads(await response.read())["status"] in ("done", "failed"):
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job} never finished")


async def test_metrics_count_documents_per_result_and_node(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        *(
            dict(name=n, models=[MODEL], prompt_tokens_per_s=20000.0, deterministic=True)
            for n in ("a", "b")
        ),
        batch__min_batch=4,
        batch__max_batch=16,
    )
    job = await _submit(http, made.url, {"model": MODEL, "input": [f"doc {i}" for i in range(90)]})
    await _over(http, made.url, job)
    samples = await scrape(http, made.url)
    assert total(samples, "sollol_batch_documents_total", result="done") == 90
    assert total(samples, "sollol_batch_documents_total", result="failed") == 0
    assert total(samples, "sollol_batch_documents_queued") == 0
    assert total(samples, "sollol_batch_jobs", status="running") == 0
    per_node = {
        n: total(samples, "sollol_embed_documents_total", node=n, result="done") for n in "ab"
    }
    assert sum(per_node.values()) == 90 and all(per_node.values())
    for node in "ab":
        assert total(samples, "sollol_embed_documents_per_second", node=node) > 0


async def test_the_dashboard_shows_each_job_with_its_progress(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL], prompt_tokens_per_s=20000.0, deterministic=True)
    )
    done = await _submit(http, made.url, {"model": MODEL, "input": ["one", "two", "three"]})
    hostile = await _submit(
        http, made.url, {"model": "<img src=x onerror=alert(1)>", "input": ["x"]}
    )
    await _over(http, made.url, done)
    await _over(http, made.url, hostile)
    async with http.get(made.url + "/sollol/dashboard") as response:
        batches = orjson.loads(await response.read())["batches"]
    check(batches, [BATCH_JOB])
    async with http.get(f"{made.url}/sollol/batches/{hostile}") as response:
        detail = orjson.loads(await response.read())
    check(detail, {**BATCH_JOB, "errors": [{"error": str, "documents": int}]})
    assert detail["errors"] == [
        {
            "error": 'model "<img src=x onerror=alert(1)>" not found, try pulling it first',
            "documents": 1,
        }
    ]
    assert [b["id"] for b in batches] == [hostile, done]  # the newest finished first
    assert batches[1]["status"] == "done" and batches[1]["progress"] == 1.0
    assert batches[0]["status"] == "failed" and batches[0]["failed"] == 1
    dom = await rendered_dom(made.url + "/dashboard")
    assert f'data-job="{done}"' in dom
    assert f"{done} · all-minilm · done" in dom and "3/3" in dom
    assert '<i style="width: 100%;"></i>' in dom
    # a client's text is text: escaped, never markup
    assert "&lt;img src=x onerror=alert(1)&gt; · failed" in dom
    assert "<img src=x" not in dom
