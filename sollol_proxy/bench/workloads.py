"""The routing benchmark's seeded workloads: the fleet, the conversations and the open-loop calls."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sollol_proxy.simulator import SimModel

GiB = 2**30


@dataclass
class Call:
    """One request of a workload: when it starts (for open-loop traffic) and what it sends."""

    model: str
    messages: list[dict[str, str]]
    num_predict: int
    at: float = 0.0


@dataclass
class Session:
    """A conversation: each turn waits for the previous answer, which becomes part of the next."""

    system: str
    questions: list[str]
    model: str
    num_predict: int
    start: float
    think: float | list[float]  # seconds between an answer and the next question (per turn)
    group: int = 0  # sessions of one group share their system prompt (a team, an agent)


@dataclass
class Scenario:
    name: str
    description: str
    nodes: list[dict[str, Any]]  # SimulatedNode arguments (the proxy is given only the URLs)
    sessions: list[Session] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    preload: bool = False  # load the model on every node before the run (a warm fleet)


WORDS = [
    "cluster",
    "latency",
    "token",
    "model",
    "cache",
    "prefix",
    "slot",
    "node",
    "batch",
    "memory",
    "weights",
    "kernel",
    "stream",
    "request",
    "answer",
    "context",
    "window",
    "schedule",
    "queue",
    "router",
    "fleet",
    "gpu",
    "tensor",
    "layer",
    "vector",
]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def model(name: str, size_gib: float) -> SimModel:
    return SimModel(name=name, size=int(size_gib * GiB))


def _poisson(
    rng: random.Random,
    count: int,
    rate: float,
    pick: Callable[[], str],
    words: int,
    num_predict: int,
) -> list[Call]:
    """Open-loop traffic: `count` one-question chats arriving at `rate` per second."""
    calls, clock = [], 0.0
    for _ in range(count):
        clock += rng.expovariate(rate)
        calls.append(
            Call(pick(), [{"role": "user", "content": _text(rng, words)}], num_predict, clock)
        )
    return calls


def chat_sessions(seed: int) -> Scenario:
    """(a) Multi-turn chats with long, per-conversation system prompts (RAG context, personas)."""
    rng = random.Random(seed)
    sessions = [
        Session(
            system=_text(rng, 1400),  # about 2.4k tokens
            questions=[_text(rng, 12) for _ in range(24)],
            model="llama3.2:latest",
            num_predict=24,
            start=i * 0.05,
            think=rng.uniform(0.02, 0.1),
            group=i,  # each conversation its own system prompt: pin_groups pins each one
        )
        for i in range(8)
    ]
    node = dict(
        models=[model("llama3.2:latest", 2)],
        num_parallel=2,
        prompt_tokens_per_s=6000,
        token_delay=0.004,
    )
    return Scenario(
        "chat_sessions",
        "8 conversations x 24 turns, 2.4k-token system prompts, 4 nodes x 2 slots",
        [dict(node, name=f"n{i}") for i in range(4)],
        sessions=sessions,
    )


def many_models(seed: int) -> Scenario:
    """(b) Six models on four nodes that each hold only two: loads and evictions dominate."""
    rng = random.Random(seed)
    names = [f"m{i}:7b" for i in range(6)]
    # Zipf-like popularity, in an order unrelated to the names: Ollama picks eviction victims by
    # blob path, which has nothing to do with how popular a model is.
    popularity = rng.sample(range(len(names)), len(names))
    weights = [1 / (popularity[i] + 1) for i in range(len(names))]
    calls = _poisson(rng, 160, 16.0, lambda: rng.choices(names, weights)[0], 30, 12)
    node = dict(
        models=[model(n, 4) for n in names],
        num_parallel=2,
        vram_bytes=9 * GiB,
        max_loaded_models=3,
        load_delay=0.15,
        load_bytes_per_s=8 * GiB,
        prompt_tokens_per_s=20000,
        token_delay=0.004,
    )
    return Scenario(
        "many_models",
        "6 models (Zipf), 4 nodes holding 2 each, ~16 req/s",
        [dict(node, name=f"n{i}") for i in range(4)],
        calls=calls,
    )


def mixed_speed(seed: int) -> Scenario:
    """(c) Two fast nodes and two slow ones (3x), steady traffic on one resident model."""
    rng = random.Random(seed)
    calls = _poisson(rng, 160, 14.0, lambda: "llama3.2:latest", 60, 32)
    base = dict(
        models=[model("llama3.2:latest", 2)],
        num_parallel=2,
        prompt_tokens_per_s=8000,
        token_delay=0.006,
    )
    nodes = [dict(base, name=f"fast{i}", speed=3.0) for i in range(2)]
    nodes += [dict(base, name=f"slow{i}", speed=1.0) for i in range(2)]
    return Scenario(
        "mixed_speed",
        "2 nodes 3x faster than the other 2, ~14 req/s, model loaded everywhere",
        nodes,
        calls=calls,
        preload=True,
    )


def _question(rng: random.Random, long_share: float) -> str:
    """Mostly a short question; sometimes a pasted document or log (300-650 tokens)."""
    return _text(rng, rng.randint(180, 400) if rng.random() < long_share else rng.randint(6, 30))


def _groups(
    rng: random.Random,
    groups: int,
    conversations: int,
    turns: tuple[int, int],
    think: tuple[float, float],
    long_share: float,
    arrivals: float,
) -> list[Session]:
    """Conversations in `groups` sharing a 2-3k-token system prompt each, starting over the
    first `arrivals` seconds; each group's conversations interleave with every other group's."""
    systems = [_text(rng, rng.randint(1150, 1750)) for _ in range(groups)]
    sessions = []
    for i in range(conversations):
        count = rng.randint(*turns)
        sessions.append(
            Session(
                system=systems[i % groups],
                questions=[_question(rng, long_share) for _ in range(count)],
                model="llama3.2:latest",
                num_predict=rng.randint(16, 48),
                start=rng.uniform(0, arrivals),
                think=[rng.uniform(*think) for _ in range(count)],
                group=i % groups,
            )
        )
    return sessions


def _crowded_nodes(count: int) -> list[dict[str, Any]]:
    node = dict(
        models=[model("llama3.2:latest", 2)],
        num_parallel=2,
        prompt_tokens_per_s=6000,
        token_delay=0.004,
    )
    return [dict(node, name=f"n{i}") for i in range(count)]


def shared_prompts(seed: int) -> Scenario:
    """(d) Four times more conversations than slots, in teams sharing long system prompts, with
    think times long enough for other conversations to take the slots in between."""
    rng = random.Random(seed)
    return Scenario(
        "shared_prompts",
        "24 conversations (4x the slots) of 6-10 turns in 4 groups sharing 2-3k-token system "
        "prompts, arriving over 12 s, think 2-5 s, 20% long questions, 3 nodes x 2 slots",
        _crowded_nodes(3),
        sessions=_groups(rng, 4, 24, (6, 10), (2.0, 5.0), 0.2, 12.0),
        preload=True,
    )


def crowded(seed: int) -> Scenario:
    """(e) Five times more conversations than slots, three groups, shorter think times."""
    rng = random.Random(seed)
    return Scenario(
        "crowded",
        "30 conversations (5x the slots) of 4-8 turns in 3 groups sharing 2-3k-token system "
        "prompts, arriving over 12 s, think 1-4 s, 10% long questions, 3 nodes x 2 slots",
        _crowded_nodes(3),
        sessions=_groups(rng, 3, 30, (4, 8), (1.0, 4.0), 0.1, 12.0),
        preload=True,
    )


def pairs(seed: int) -> Scenario:
    """(f) Twice as many conversations as slots and growing histories: six groups of agents
    on four nodes, each turn adding a tool result to the history."""
    rng = random.Random(seed)
    return Scenario(
        "pairs",
        "16 conversations (2x the slots) of 6-10 turns in 6 groups sharing 2-3k-token system "
        "prompts, arriving over 8 s, think 1-3 s, 40% long questions, 4 nodes x 2 slots",
        _crowded_nodes(4),
        sessions=_groups(rng, 6, 16, (6, 10), (1.0, 3.0), 0.4, 8.0),
        preload=True,
    )


SCENARIOS: dict[str, Callable[[int], Scenario]] = {
    "chat_sessions": chat_sessions,
    "many_models": many_models,
    "mixed_speed": mixed_speed,
    "shared_prompts": shared_prompts,
    "crowded": crowded,
    "pairs": pairs,
}
