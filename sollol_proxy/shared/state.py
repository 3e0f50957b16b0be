"""The shared state of one replica, as the app wires it: the link to Redis and the parts that
share through it, with their background tasks."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from sollol_proxy.admission.admission import Admission
from sollol_proxy.config.policies import StatePolicy
from sollol_proxy.fleet.fleet import Fleet
from sollol_proxy.fleet.learning import Learner
from sollol_proxy.shared.decisions import SharedDecisionLog
from sollol_proxy.shared.health import Listener, SharedHealth
from sollol_proxy.shared.learning import SharedLearning
from sollol_proxy.shared.link import Link
from sollol_proxy.shared.prompt_cache import SharedPromptCache
from sollol_proxy.shared.report import SharedCollector, alerts
from sollol_proxy.shared.slots import SharedSlots


class SharedState:
    def __init__(
        self,
        policy: StatePolicy,
        fleet: Fleet,
        admission: Admission,
        probe_interval: Callable[[], float],
        decisions_kept: int,
        learner: Learner,
        prompt_cache: SharedPromptCache,
    ) -> None:
        self.link = Link(policy)
        self.decisions = SharedDecisionLog(decisions_kept, self.link)
        self.slots = SharedSlots(self.link, admission)
        self.health = SharedHealth(self.link, fleet, probe_interval)
        self.learning = SharedLearning(self.link, learner)
        self.prompt_cache = prompt_cache
        prompt_cache.connect(self.link)
        self.collector = SharedCollector(self.link, self.slots, self.health)

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {
            "shared:link": self.link.run(),
            "shared:events": self.link.listen(),
            "shared:leases": self.slots.leases.run(),
            "shared:keep": self.slots.leases.keep(),
            "shared:health": self.health.run(),
            "shared:decisions": self.decisions.run(),
            "shared:learning": self.learning.run(),
            "shared:prompt-cache": self.prompt_cache.run(),
        }

    def listening(self, inner: Listener) -> Listener:
        return self.health.listening(inner)

    def alerts(self) -> list[dict[str, str]]:
        return alerts(self.link)

    async def close(self) -> None:
        await self.slots.leases.leave()
        await self.link.close()
