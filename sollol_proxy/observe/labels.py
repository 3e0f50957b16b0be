"""Bounded label values for metrics and per-model statistics.

Clients choose model names freely; a request for a model no node has must not create a new
series (or a new stats entry) per name, so only models some node lists count as themselves.
"""

from __future__ import annotations

from sollol_proxy.fleet.fleet import Fleet

OTHER = "other"


def model_label(fleet: Fleet, model: str) -> str:
    if not model:
        return ""
    return model if any(model in node.models for node in fleet.nodes.values()) else OTHER


def node_label(fleet: Fleet, node: str) -> str:
    """A configured node's name; "" when no node answered; "fanout" for a management fan-out."""
    if not node or node in fleet.nodes:
        return node
    return "fanout" if "," in node else OTHER
