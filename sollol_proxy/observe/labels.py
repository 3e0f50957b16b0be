"""Bounded label values for metrics and per-model statistics.

Clients choose model names freely; a request for a model no node has must not create a new
series (or a new stats entry) per name, so only models some node lists count as themselves.
"""

from __future__ import annotations

from sollol_proxy.fleet.fleet import Fleet

OTHER = "other"


def model_label(fleet: Fleet, model: str, served_by: str = "") -> str:
    """`model` when some node lists it, else OTHER. `served_by`, the node that answered, is
    asked first: it nearly always lists the model, which spares a walk of the whole fleet."""
    if not model:
        return ""
    served = fleet.nodes.get(served_by)
    if served is not None and model in served.models:
        return model
    return model if any(model in node.models for node in fleet.nodes.values()) else OTHER


def node_label(fleet: Fleet, node: str) -> str:
    """A configured node's name; "" when no node answered; "fanout" for a management fan-out."""
    if not node or node in fleet.nodes:
        return node
    return "fanout" if "," in node else OTHER
