"""`cors.origins` (`SOLLOL_ORIGINS`): the origins a browser page may call the proxy from, written
as `OLLAMA_ORIGINS` is, and refused at start-up where Ollama would refuse to start."""

from __future__ import annotations

from sollol_proxy.config.layers import Layers
from sollol_proxy.wire.cors import origin_problem, split_origins


def cors_origins(layers: Layers) -> tuple[str, ...]:
    """The configured origins; Ollama's defaults (localhost, 127.0.0.1, app://, ...) are added
    to them by the CORS policy, as Ollama adds them to OLLAMA_ORIGINS."""
    key = "cors.origins"
    value = layers.values.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        origins = split_origins(value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        origins = list(value)
    else:
        raise layers.error(
            key, "expected a list of origins, or one string of them separated by commas"
        )
    for index, origin in enumerate(origins):
        problem = origin_problem(origin)
        if problem is not None:
            raise layers.error(f"{key}[{index}]", problem)
    return tuple(origins)
