"""When the proxy may send a request to another node, and how fast.

Retries happen only before the client received a byte (forwarder.py holds the answer until the
node's first body bytes). What is retried: connection errors, resets, first-byte timeouts,
5xx answers (the busy 503 included) and a 404 "model not found" from a node the inventory
said had the model. Never another 4xx: the next node would give the same answer.

A global budget (Envoy's retry budget) keeps a failing fleet from being hit by a retry storm:
a retry may start while the retries in progress stay below
``max(min_concurrent, budget_ratio * requests in progress)``. A retry is in progress from
the decision to retry (its backoff included) until the node it went to answers or fails.
"""

from __future__ import annotations

import re
from enum import StrEnum

from sollol_proxy.config.policies import RetryPolicy

# Ollama's queue-full answer (reference 4.1); other 503s are plain server errors.
BUSY_STATUS = 503
# Ollama's "not found" messages for a model (reference 4.1): generate/chat/show/delete, and
# embed/embeddings/scheduling ("try pulling it first").
# On /v1 the same message is inside the OpenAI envelope, so it is searched, not matched.
_MODEL_NOT_FOUND = re.compile(rb"\"model ('[^']*'|\\\"[^\"]*\\\") not found")
# 500s that the request causes (reference 3.19: a wrongly typed option goes through the
# scheduler's default branch): every node would answer the same, and the node is fine.
_REQUEST_CAUSED_500 = re.compile(rb'option \\"[^"\\]*\\" must be of type ')


class Verdict(StrEnum):
    """What a node's answer (status and first bytes) means for the request."""

    RELAY = "relay"  # the answer goes to the client, whatever its status
    BUSY = "busy"  # queue-full 503: another node may have room
    SERVER_ERROR = "server_error"  # 5xx: another node may work
    MODEL_MISSING = "model_missing"  # the inventory was wrong about this node


def judge(status: int, first_chunk: bytes, inventory_has_model: bool) -> Verdict:
    if status == BUSY_STATUS and b"maximum pending requests exceeded" in first_chunk:
        return Verdict.BUSY
    if status >= 500:
        if status == 500 and _REQUEST_CAUSED_500.search(first_chunk):
            return Verdict.RELAY
        return Verdict.SERVER_ERROR
    if status == 404 and inventory_has_model and _MODEL_NOT_FOUND.search(first_chunk):
        return Verdict.MODEL_MISSING
    return Verdict.RELAY


class RetryBudget:
    """Requests and retries in progress across the whole proxy.

    A retry holds its permit until the node it went to has answered (or failed): a retried
    stream that then runs for minutes no longer counts, since it is no longer a retry storm."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.requests = 0
        self.retries = 0
        self.refused = 0  # retries the budget did not allow, since start

    def limit(self) -> int:
        return max(self.policy.min_concurrent, int(self.policy.budget_ratio * self.requests))

    def try_acquire(self) -> Permit | None:
        if self.retries >= self.limit():
            self.refused += 1
            return None
        self.retries += 1
        return Permit(self)


class Permit:
    """One retry in progress; releasing it twice is harmless."""

    def __init__(self, budget: RetryBudget) -> None:
        self._budget: RetryBudget | None = budget

    def release(self) -> None:
        if self._budget is not None:
            self._budget.retries -= 1
            self._budget = None
