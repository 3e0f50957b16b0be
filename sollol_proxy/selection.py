"""Which nodes may take a request, in which order: the fleet's facts fed to the routing strategy."""

from __future__ import annotations

from aiohttp import web

from .fleet import Fleet, NodeState
from .headers import NODE_HEADER
from .names import normalize_model
from .proxy import Target
from .routing import RouteRequest, Strategy

ALL_NODES = "all"


class NoTarget(Exception):
    """No node can take the request; the status and message go back to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Selector:
    def __init__(self, fleet: Fleet, strategy: Strategy) -> None:
        self._fleet = fleet
        self._strategy = strategy

    def pinned(self, request: web.Request, *, allow_all: bool) -> list[NodeState] | None:
        """Nodes named by the operator's X-Sollol-Node header, or None when it is absent."""
        value = request.headers.get(NODE_HEADER, "").strip()
        if not value:
            return None
        if value.lower() == ALL_NODES:
            if not allow_all:
                raise NoTarget(
                    400,
                    f"{NODE_HEADER}: all only applies to management routes (pull, delete, copy, create, push)",
                )
            nodes = self._fleet.healthy()
            if not nodes:
                raise NoTarget(503, f"no healthy Ollama node ({self._fleet.unhealthy_summary()})")
            return nodes
        names = [part.strip() for part in value.split(",") if part.strip()]
        unknown = [name for name in names if name not in self._fleet.nodes]
        if unknown:
            known = ", ".join(self._fleet.nodes)
            raise NoTarget(400, f"{NODE_HEADER} names unknown node {unknown[0]!r} (known: {known})")
        return [self._fleet.nodes[name] for name in names]

    def rank(self, nodes: list[NodeState], model: str, request_id: str) -> list[Target]:
        if not nodes:
            raise NoTarget(503, f"no healthy Ollama node ({self._fleet.unhealthy_summary()})")
        by_name = {n.name: n for n in nodes}
        views = self._fleet.views(nodes, model)
        choices = self._strategy.rank(
            RouteRequest(model=normalize_model(model), request_id=request_id), views
        )
        return [Target(by_name[c.node], f"{self._strategy.name}: {c.reason}") for c in choices]

    def any_node(self, request_id: str, why: str) -> list[Target]:
        """Requests that do not depend on a model: any healthy node, least loaded first."""
        return [
            Target(
                t.node,
                f"{self._strategy.name}: {why}, {t.node.in_flight}/{t.node.config.num_parallel} slots busy",
            )
            for t in self.rank(self._fleet.healthy(), "", request_id)
        ]

    async def for_model(self, request: web.Request, model: str, request_id: str) -> list[Target]:
        pinned = self.pinned(request, allow_all=False)
        if pinned is not None:
            return [Target(node, "pinned by " + NODE_HEADER) for node in pinned]
        if not model.strip():
            # No model to route by: the node answers with Ollama's own error for that.
            return self.any_node(request_id, "no model named")
        holders = self._fleet.with_model(model)
        if not holders and not self._fleet.with_model(model, healthy_only=False):
            await self._fleet.refresh_for_missing_model()
            holders = self._fleet.with_model(model)
        if holders:
            return self.rank(holders, model, request_id)
        unreachable = self._fleet.with_model(model, healthy_only=False)
        if unreachable:
            raise NoTarget(
                503,
                f"model '{model}' is only on nodes that are down ({self._fleet.unhealthy_summary(unreachable)})",
            )
        # No node has it: a node answers with Ollama's own "not found" for this route, byte for byte.
        return self.any_node(request_id, "no node has the model")

    # -- management routes (see README "Managing models through the proxy") ------------------

    def placement(self) -> NodeState:
        """Where blobs and new models go: the first healthy node in configuration order, so that
        a blob upload and the create that uses it always meet on the same node."""
        healthy = self._fleet.healthy()
        if not healthy:
            raise NoTarget(503, f"no healthy Ollama node ({self._fleet.unhealthy_summary()})")
        return healthy[0]

    def for_management(
        self, request: web.Request, kind: str, model: str, source_model: str, request_id: str
    ) -> tuple[list[NodeState], str]:
        """The nodes a pull/push/delete/copy/create runs on, and a label saying why."""
        pinned = self.pinned(request, allow_all=True)
        if pinned is not None:
            return pinned, f"{kind}: pinned by {NODE_HEADER}"
        if kind == "pull":
            nodes = self._fleet.healthy()
            if not nodes:
                raise NoTarget(503, f"no healthy Ollama node ({self._fleet.unhealthy_summary()})")
            return nodes, f"pull: every healthy node ({len(nodes)})"
        if kind in ("delete", "copy"):
            holders = self._fleet.with_model(model)
            if holders:
                return holders, f"{kind}: every healthy node with the model ({len(holders)})"
            return [
                self.any_node(request_id, "no node has the model")[0].node
            ], f"{kind}: no node has the model"
        if kind == "push":
            holders = self._fleet.with_model(model)
            if holders:
                return [
                    self.rank(holders, model, request_id)[0].node
                ], "push: a node with the model"
            return [
                self.any_node(request_id, "no node has the model")[0].node
            ], "push: no node has the model"
        # create: next to its base model when it names one the fleet has, else the placement node
        holders = self._fleet.with_model(source_model) if source_model else []
        if holders:
            return [holders[0]], "create: first healthy node with the base model"
        return [self.placement()], "create: placement node (first healthy node)"
