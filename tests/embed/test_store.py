"""The job store on its own (SQLite in a temporary directory): a result is written once, results
read back in order up to the first document without one, bounds, failure, expiry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sollol_proxy.embed.store import Job, Result, Store, StoreFull


def _job(job_id: str, total: int, created: float = 1.0) -> Job:
    return Job(job_id, "m", b'{"model":"m"}', "queued", created, None, None, total, 0, 0, None)


def test_the_file_is_created_with_the_first_job(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "data"))
    assert not store.exists()
    store.create(_job("a", 2), [(None, "x"), (b'"id-1"', "y")], max_total=10)
    assert store.exists() and store.path == tmp_path / "data" / "batches.sqlite3"


def test_results_are_written_once_and_read_in_order(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.create(_job("a", 4), [(b"1", "w"), (b"2", "x"), (None, "y"), (None, "z")], max_total=10)
    assert store.pending("a", 0, 10) == [(0, "w"), (1, "x"), (2, "y"), (3, "z")]
    store.store("a", [(0, b"[0.1]"), (2, b"[0.3]")])
    store.store("a", [(0, b"[9.9]")], [(2, "late error")])  # already stored: ignored
    assert store.results("a", 0, 10) == [Result(0, b"1", b"[0.1]", None)]  # stops at 1
    store.store("a", [(1, b"[0.2]")], [(3, "too long")])
    assert store.results("a", 1, 10) == [
        Result(1, b"2", b"[0.2]", None),
        Result(2, None, b"[0.3]", None),
        Result(3, None, None, "too long"),
    ]
    job = store.job("a")
    assert job is not None and (job.done, job.failed) == (3, 1)
    assert store.errors("a", 5) == [("too long", 1)]
    assert store.pending("a", 0, 10) == []


def test_the_total_bound_counts_every_stored_document(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.create(_job("a", 6), [(None, "x")] * 6, max_total=10)
    with pytest.raises(StoreFull) as full:
        store.create(_job("b", 5), [(None, "x")] * 5, max_total=10)
    assert full.value.stored == 6 and store.job("b") is None  # nothing of it was stored
    store.delete("a")
    store.create(_job("b", 5), [(None, "x")] * 5, max_total=10)


def test_a_failed_job_gives_every_pending_document_its_error(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.create(_job("a", 3), [(None, "x")] * 3, max_total=10)
    store.store("a", [(0, b"[1]")])
    store.fail_pending("a", "model gone", at=5.0)
    job = store.job("a")
    assert job is not None and (job.status, job.done, job.failed, job.error) == (
        "failed",
        1,
        2,
        "model gone",
    )
    assert [r.error for r in store.results("a", 0, 10)] == [None, "model gone", "model gone"]


def test_finished_jobs_expire_and_unfinished_ones_resume(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    now = time.time()
    for job_id, created in (("old", 1.0), ("new", 2.0), ("open", 3.0), ("next", 4.0)):
        store.create(_job(job_id, 1, created), [(None, "x")], max_total=10)
    store.set_status("old", "done", at=now - 100)
    store.set_status("new", "done", at=now)
    store.set_status("open", "running", at=now)
    assert store.expire(now - 50) == ["old"]
    assert [j.id for j in store.jobs(10)] == ["next", "open", "new"]
    assert [j.id for j in store.unfinished()] == ["open", "next"]  # oldest first
