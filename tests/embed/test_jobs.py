"""Batch jobs over real sockets: submitted, embedded at the batch priority, read back in order,
cancelled, bounded, and resumed by a new proxy on the same store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest

from sollol_proxy.app import ADMISSION, JOBS, PROXY, apply_config
from sollol_proxy.embed import jobrun, jobs
from sollol_proxy.server import start_proxy
from tests.conftest import Cluster, ClusterFactory, eventually

MODEL = "nomic-embed-text"


def _docs(count: int) -> list[str]:
    return [f"document {i}: " + "words " * (i % 5 + 1) for i in range(count)]


async def _fleet(cluster: ClusterFactory, rate: float = 50000.0, **settings: Any) -> Cluster:
    specs = [
        dict(name=n, models=[MODEL], prompt_tokens_per_s=rate, deterministic=True)
        for n in ("a", "b", "c")
    ]
    return await cluster(*specs, batch__min_batch=4, batch__max_batch=32, **settings)


async def _json(
    http: aiohttp.ClientSession, method: str, url: str, payload: Any = None
) -> tuple[int, Any]:
    data = None if payload is None else orjson.dumps(payload)
    async with http.request(method, url, data=data) as response:
        return response.status, orjson.loads(await response.read())


async def _results(http: aiohttp.ClientSession, url: str, job: str, query: str = "") -> list[Any]:
    async with http.get(f"{url}/sollol/batches/{job}/results{query}") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        return [orjson.loads(line) for line in (await response.read()).splitlines()]


async def _reached(
    http: aiohttp.ClientSession,
    url: str,
    job: str,
    condition: Callable[[Any], bool],
    within: float = 20,
) -> Any:
    """The job's status, read until `condition` holds of it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        status, body = await _json(http, "GET", f"{url}/sollol/batches/{job}")
        assert status == 200
        if condition(body):
            return body
        assert loop.time() < deadline, body
        await asyncio.sleep(0.05)


async def _finished(http: aiohttp.ClientSession, url: str, job: str, within: float = 20) -> Any:
    return await _reached(
        http, url, job, lambda body: body["status"] in ("done", "failed", "cancelled"), within
    )


async def _direct(http: aiohttp.ClientSession, node_url: str, docs: list[str]) -> list[Any]:
    async with http.post(
        node_url + "/api/embed", data=orjson.dumps({"model": MODEL, "input": docs})
    ) as response:
        return orjson.loads(await response.read())["embeddings"]


async def test_a_job_is_embedded_and_read_back_in_order(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster)
    docs = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(_docs(300))]
    status, job = await _json(
        http, "POST", c.url + "/api/embed/batch", {"model": MODEL, "docs": docs}
    )
    assert status == 202
    assert job["status"] == "queued" and job["total"] == 300
    final = await _finished(http, c.url, job["id"])
    assert (final["status"], final["done"], final["failed"], final["pending"]) == (
        "done",
        300,
        0,
        0,
    )
    assert final["progress"] == 1.0 and final["docs_per_s"] > 0
    results = await _results(http, c.url, job["id"])
    assert [r["index"] for r in results] == list(range(300))
    assert [r["id"] for r in results] == [d["id"] for d in docs]
    assert [r["embedding"] for r in results] == await _direct(http, c.nodes[0].url, _docs(300))
    assert sum(1 for n in c.nodes if n.stats.requests) == 3  # every node took a share
    page = await _results(http, c.url, job["id"], "?offset=298&limit=5")
    assert [r["index"] for r in page] == [298, 299]
    status, listing = await _json(http, "GET", c.url + "/api/batch-status")
    assert status == 200 and [j["id"] for j in listing["jobs"]] == [job["id"]]


async def test_jobs_wait_behind_interactive_requests(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    """A job's sub-batches wait in the admission queue at priority 1: a normal request that
    arrives later still goes first."""
    c = await cluster(
        dict(name="a", models=[MODEL], prompt_tokens_per_s=2000.0, deterministic=True),
        batch__min_batch=8,
        batch__max_batch=8,
    )
    node = c.nodes[0]
    busy = asyncio.gather(  # the node's slot, and the one place behind it the proxy uses
        *(
            _json(http, "POST", c.url + "/api/embed", {"model": MODEL, "input": f"{k} " * 800})
            for k in range(2)
        )
    )
    await eventually(lambda: node.in_flight() == 2)
    status, job = await _json(
        http, "POST", c.url + "/api/embed/batch", {"model": MODEL, "input": _docs(40)}
    )
    assert status == 202
    admission = c.proxy.runner.app[ADMISSION]
    await eventually(lambda: admission.depth()[1] == 2)  # the job's workers wait
    status, _ = await _json(http, "POST", c.url + "/api/embed", {"model": MODEL, "input": "now"})
    assert status == 200
    assert [status for status, _ in await busy] == [200, 200]
    await _finished(http, c.url, job["id"])
    order = [orjson.loads(r.body)["input"] for r in node.requests if r.path == "/api/embed"]
    assert order[2] == "now"  # before any of the job's sub-batches
    assert all(isinstance(i, list) for i in order[3:]) and len(order) == 3 + 40 // 8


async def test_bad_submissions_and_bounds(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster, batch__max_docs_per_job=10, batch__max_docs_total=15)
    url = c.url + "/api/embed/batch"
    for payload, message in (
        ({"docs": ["x"]}, "model is required"),
        ({"model": "m" * 513, "docs": ["x"]}, "model: a name of at most 512 characters"),
        ({"model": MODEL}, "no documents: give docs (or input) with at least one"),
        ({"model": MODEL, "docs": [1]}, 'docs[0]: expected a string or {"id": ..., "text": "..."}'),
        (
            {"model": MODEL, "docs": [{"id": True, "text": "x"}]},
            "docs[0].id: a string or an integer of at most 256 characters",
        ),
        (
            {"model": MODEL, "docs": [{"id": "x" * 257, "text": "x"}]},
            "docs[0].id: a string or an integer of at most 256 characters",
        ),
        (
            {"model": MODEL, "input": ["a"], "prompt": "x"},
            "unknown field 'prompt' (known: dimensions, docs, input, keep_alive, model, options, truncate)",
        ),
        (
            {"model": MODEL, "input": ["a"], "dimensions": "8"},
            "dimensions must be a non-negative integer",
        ),
        ({"model": MODEL, "input": ["a"], "docs": ["b"]}, "give either docs or input, not both"),
    ):
        status, body = await _json(http, "POST", url, payload)
        assert (status, body) == (400, {"error": message}), payload
    status, body = await _json(http, "POST", url, {"model": MODEL, "input": _docs(11)})
    assert status == 413
    assert body["error"].startswith("a batch job holds at most 10 documents")
    status, _ = await _json(http, "POST", url, {"model": MODEL, "input": _docs(10)})
    assert status == 202
    status, body = await _json(http, "POST", url, {"model": MODEL, "input": _docs(6)})
    assert status == 429
    assert "at most 15 (batch.max_docs_total)" in body["error"]
    async with http.get(url) as response:
        assert (response.status, response.headers["Allow"]) == (405, "POST")
    status, body = await _json(http, "GET", c.url + "/sollol/batches/0123456789abcdef")
    assert (status, body) == (404, {"error": "no such batch job"})


async def test_cancel_then_delete(cluster: ClusterFactory, http: aiohttp.ClientSession) -> None:
    c = await _fleet(cluster, rate=3000.0)
    status, job = await _json(
        http, "POST", c.url + "/api/embed/batch", {"model": MODEL, "input": _docs(400)}
    )
    await eventually(lambda: sum(n.stats.requests for n in c.nodes) > 0)
    status, cancelled = await _json(http, "DELETE", f"{c.url}/sollol/batches/{job['id']}")
    assert status == 200 and cancelled["status"] == "cancelled" and not cancelled["deleted"]
    final = await _finished(http, c.url, job["id"])
    assert final["status"] == "cancelled" and final["done"] < 400
    await asyncio.sleep(0.3)
    served = sum(n.stats.requests for n in c.nodes)
    await asyncio.sleep(0.3)
    assert sum(n.stats.requests for n in c.nodes) == served  # nothing more is sent
    assert all(n.in_flight() == 0 for n in c.nodes)
    status, deleted = await _json(http, "DELETE", f"{c.url}/sollol/batches/{job['id']}")
    assert status == 200 and deleted["deleted"]
    status, _ = await _json(http, "GET", f"{c.url}/sollol/batches/{job['id']}")
    assert status == 404


async def test_a_bad_document_fails_alone(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster)
    docs = _docs(50)
    docs[17] = "word " * 5000  # over nomic-embed-text's 2048-token context
    status, job = await _json(
        http, "POST", c.url + "/api/embed/batch", {"model": MODEL, "input": docs, "truncate": False}
    )
    assert status == 202
    final = await _finished(http, c.url, job["id"])
    assert (final["status"], final["done"], final["failed"]) == ("done", 49, 1)
    assert final["errors"] == [
        {"error": "the input length exceeds the context length", "documents": 1}
    ]
    results = await _results(http, c.url, job["id"])
    assert results[17] == {
        "index": 17,
        "id": None,
        "error": "the input length exceeds the context length",
    }
    assert all("embedding" in r for i, r in enumerate(results) if i != 17)


async def test_a_missing_model_fails_the_job(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster)
    status, job = await _json(
        http, "POST", c.url + "/api/embed/batch", {"model": "no-such-model", "input": _docs(20)}
    )
    assert status == 202
    final = await _finished(http, c.url, job["id"])
    assert (final["status"], final["failed"]) == ("failed", 20)
    assert final["error"] == 'model "no-such-model" not found, try pulling it first'


async def test_a_new_proxy_resumes_the_job(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    c = await _fleet(cluster, rate=2000.0)
    docs = _docs(600)
    status, job = await _json(
        http, "POST", c.url + "/api/embed/batch", {"model": MODEL, "input": docs}
    )
    assert status == 202
    # Until some answers are stored: a node counts a request as it arrives, long before the job
    # counts its documents done on a loaded machine.
    midway = await _reached(http, c.url, job["id"], lambda body: body["done"] > 0)
    assert midway["status"] == "running" and midway["done"] < 600
    await c.proxy.stop()
    second = await start_proxy(c.config)
    c.extra.append(second)
    try:
        final = await _finished(http, second.url, job["id"], within=30)
        assert (final["status"], final["done"], final["failed"]) == ("done", 600, 0)
        results = await _results(http, second.url, job["id"])
        assert [r["embedding"] for r in results] == await _direct(http, c.nodes[0].url, docs)
    finally:
        await second.stop()


async def test_a_proxy_started_with_the_monotonic_clock_near_zero_expires_old_jobs_at_once(
    cluster: ClusterFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine just booted (a CI runner) starts its monotonic clock near zero: the expiry
    # pass at the start still runs, not only once the clock has passed EXPIRY_EVERY_S.
    c = await _fleet(cluster, batch__retention=0.3)
    status, job = await _json(
        http, "POST", c.url + "/api/embed/batch", {"model": MODEL, "input": _docs(4)}
    )
    assert status == 202 and (await _finished(http, c.url, job["id"]))["status"] == "done"
    await c.proxy.stop()
    await asyncio.sleep(0.4)  # wall-clock time past its retention, which the store counts in
    monkeypatch.setattr(jobs, "time", SimpleNamespace(monotonic=lambda: 1.0, time=time.time))
    second = await start_proxy(c.config)
    c.extra.append(second)
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while (await _json(http, "GET", f"{second.url}/sollol/batches/{job['id']}"))[0] != 404:
            assert asyncio.get_running_loop().time() < deadline, "the old job was kept"
            await asyncio.sleep(0.05)
    finally:
        await second.stop()


async def test_a_store_that_cannot_be_written_is_a_500_saying_where(
    cluster: ClusterFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    c = await _fleet(cluster, batch__data_dir=str(blocked / "jobs"))
    status, body = await _json(
        http, "POST", c.url + "/api/embed/batch", {"model": MODEL, "input": ["x"]}
    )
    assert status == 500
    assert body["error"].startswith(f"sollol-proxy cannot store batch jobs in {blocked}/jobs/")


async def test_jobs_run_one_after_the_other_and_expire(
    cluster: ClusterFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "EXPIRY_EVERY_S", 0.05)
    c = await _fleet(cluster, batch__retention=0.5)
    url = c.url + "/api/embed/batch"
    first = (await _json(http, "POST", url, {"model": MODEL, "input": _docs(200)}))[1]["id"]
    second = (await _json(http, "POST", url, {"model": MODEL, "input": _docs(20)}))[1]["id"]
    done = [await _finished(http, c.url, job) for job in (first, second)]
    assert done[1]["started"] >= done[0]["finished"]
    for job in (first, second):  # half a second after they finished, they are gone
        await eventually(lambda job=job: job not in c.proxy.runner.app[JOBS].jobs, within=5)
        status, _ = await _json(http, "GET", f"{c.url}/sollol/batches/{job}")
        assert status == 404


async def test_sub_batches_the_nodes_keep_failing_end_with_their_error(
    cluster: ClusterFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobrun, "PAUSE_S", 0.01)
    c = await _fleet(cluster, outlier__consecutive_failures=1000)
    for node in c.nodes:
        node.faults.status_error = (500, "an error was encountered while running the model")
    status, job = await _json(
        http, "POST", c.url + "/api/embed/batch", {"model": MODEL, "input": _docs(10)}
    )
    assert status == 202
    final = await _finished(http, c.url, job["id"])
    assert (final["status"], final["done"], final["failed"]) == ("done", 0, 10)
    assert final["errors"] == [
        {"error": "an error was encountered while running the model", "documents": 10}
    ]
    sent = sum(len([r for r in n.requests if r.path == "/api/embed"]) for n in c.nodes)
    # 3 sub-batches (4 + 4 + 2 documents), each tried MAX_TRIES times, each try on the 3 nodes
    assert sent == 3 * jobrun.MAX_TRIES * 3


async def test_a_job_waits_while_its_nodes_are_down(
    cluster: ClusterFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobrun, "PAUSE_S", 0.05)
    c = await _fleet(cluster)
    for node in c.nodes:
        node.faults.refuse = True
    await eventually(lambda: not any(n.healthy for n in c.fleet.nodes.values()))
    status, job = await _json(
        http, "POST", c.url + "/api/embed/batch", {"model": MODEL, "input": _docs(30)}
    )
    assert status == 202
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (await _json(http, "GET", f"{c.url}/sollol/batches/{job['id']}"))[1]["waiting"] is None:
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    detail = (await _json(http, "GET", f"{c.url}/sollol/batches/{job['id']}"))[1]
    assert detail["status"] == "running" and detail["done"] == 0
    assert "only on nodes that are down" in detail["waiting"]
    for node in c.nodes:
        node.faults.refuse = False
    final = await _finished(http, c.url, job["id"])
    assert (final["status"], final["done"]) == ("done", 30)


async def test_a_reload_applies_new_bounds_and_keeps_the_store(
    cluster: ClusterFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    c = await _fleet(cluster)
    app = c.proxy.runner.app
    running = app[PROXY].live.config
    apply_config(
        app,
        replace(
            running,
            batch=replace(running.batch, max_docs_per_job=5, data_dir=str(tmp_path / "elsewhere")),
        ),
    )
    status, body = await _json(
        http, "POST", c.url + "/api/embed/batch", {"model": MODEL, "input": _docs(6)}
    )
    assert status == 413 and "at most 5 documents" in body["error"]
    assert app[PROXY].live.config.batch.data_dir == running.batch.data_dir
    assert Path(app[JOBS].store.where).parent == Path(running.batch.data_dir)
