"""Only the candidates that can be in the top are priced, and the top is the whole ranking's."""

from __future__ import annotations

import random
from collections.abc import Mapping

from sollol_proxy.fleet.pricing import bounded, price, top_size
from sollol_proxy.fleet.prompt_cache import Probe
from sollol_proxy.fleet.views import Kept, with_probe
from sollol_proxy.routing import NodeView, RouteRequest
from sollol_proxy.routing.performance import estimate, ranked

REQUEST = RouteRequest(model="m", request_id="r", prompt_tokens=2000, expected_output=150)


def kept(rng: random.Random, i: int) -> Kept:
    entry = Kept(f"n{i}")
    view = NodeView(
        name=entry.name,
        in_flight=rng.randint(0, 4),
        num_parallel=rng.choice((1, 2, 4)),
        resident=rng.random() < 0.3,
        model_in_flight=rng.randint(0, 2),
        loads_pending=rng.randint(0, 1),
        prefill_tps=rng.choice((1000.0, 2000.0)),
        decode_tps=rng.choice((40.0, 80.0)),
        load_s=rng.uniform(2, 10),
        evict_s=rng.choice((0.0, 2.0)),
    )
    entry.made(view, view.num_parallel)
    return entry


def test_the_top_is_the_whole_rankings_and_the_rest_are_all_there() -> None:
    rng = random.Random(3)
    top = top_size(3)
    saved = 0
    for _ in range(300):
        bases = [kept(rng, i) for i in range(rng.randint(2 * top + 1, 60))]
        # What the prompt finds on each node: a cached prefix on some, pushed-out ones on others.
        found = {e.name: Probe(rng.choice((0, 500, 1900)), rng.choice((0.0, 300.0))) for e in bases}
        asked: list[str] = []

        def probe(
            names: list[str], found: dict[str, Probe] = found, asked: list[str] = asked
        ) -> dict[str, Probe]:
            asked.extend(names)
            return {name: found[name] for name in names}

        def probed(entries: list[Kept], probes: Mapping[str, Probe]) -> list[NodeView]:
            return [
                with_probe(e.view, probes[e.name].cached, probes[e.name].displaced)  # type: ignore[arg-type]
                for e in entries
            ]

        every = probed(bases, found)
        whole = ranked(REQUEST, every, [estimate(v, REQUEST) for v in every])
        priced = price(bases, REQUEST, top, probe, probed, [])
        mine = ranked(REQUEST, priced.views, priced.estimates)
        assert [(c.node, c.estimate) for c in mine[:top]] == [
            (c.node, c.estimate) for c in whole[:top]
        ]
        names = [c.node for c in mine] + [e.name for e in priced.others]
        assert sorted(names) == sorted(c.node for c in whole)
        assert len(asked) == len(set(asked)) == len(priced.views)  # each probed once
        saved += len(bases) - len(asked)
    assert saved > 3000  # most candidates were not probed


def test_small_fleets_are_priced_whole() -> None:
    top = top_size(3)
    assert top == 8 and top_size(12) == 12
    assert not bounded(2 * top, top) and bounded(2 * top + 1, top)
