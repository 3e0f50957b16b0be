"""What is retried, the global retry budget, and the backoff between attempts."""

from __future__ import annotations

import random

import pytest

from sollol_proxy.config.policies import RetryPolicy
from sollol_proxy.forward.retry import RetryBudget, Verdict, judge

BUSY = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'


@pytest.mark.parametrize(
    ("status", "body", "listed", "verdict"),
    [
        (200, b'{"model":"x"', True, Verdict.RELAY),
        (503, BUSY, True, Verdict.BUSY),
        (503, b'{"error":"model is overloaded"}', True, Verdict.SERVER_ERROR),
        (
            500,
            b'{"error":"an error was encountered while running the model"}',
            True,
            Verdict.SERVER_ERROR,
        ),
        (502, b"", True, Verdict.SERVER_ERROR),
        (500, b'{"error":"option \\"num_ctx\\" must be of type integer"}', True, Verdict.RELAY),
        (404, b'{"error":"model \'llama3.2\' not found"}', True, Verdict.MODEL_MISSING),
        (
            404,
            b'{"error":"model \\"x\\" not found, try pulling it first"}',
            True,
            Verdict.MODEL_MISSING,
        ),
        (
            404,
            b'{"error":{"message":"model \'x\' not found","type":"not_found_error","param":null,"code":null}}\n',
            True,
            Verdict.MODEL_MISSING,
        ),
        (404, b'{"error":"model \'llama3.2\' not found"}', False, Verdict.RELAY),
        (404, b"404 page not found", True, Verdict.RELAY),
        (400, b'{"error":"model is required"}', True, Verdict.RELAY),
        (429, b'{"error":"rate limit exceeded"}', True, Verdict.RELAY),
    ],
)
def test_only_what_another_node_could_answer_differently_is_retried(
    status: int, body: bytes, listed: bool, verdict: Verdict
) -> None:
    assert judge(status, body, listed) is verdict


def test_budget_allows_min_concurrent_or_a_share_of_requests() -> None:
    budget = RetryBudget(RetryPolicy(budget_ratio=0.25, min_concurrent=2))
    budget.requests = 4
    permits = [budget.try_acquire(), budget.try_acquire()]
    assert all(permits) and budget.try_acquire() is None and budget.refused == 1
    budget.requests = 12  # 25 % of 12: three retries may be in progress
    third = budget.try_acquire()
    assert third is not None and budget.try_acquire() is None
    third.release()
    third.release()  # harmless
    assert budget.retries == 2
    assert budget.try_acquire() is not None


def test_backoff_is_full_jitter_doubling_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff_base=0.1, backoff_max=0.3)
    rng = random.Random(3)
    for retry, ceiling in ((1, 0.1), (2, 0.2), (3, 0.3), (9, 0.3)):
        waits = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8  # spread over the whole range
