"""The configuration: one frozen `Config` built once from the YAML file, the SOLLOL_* environment
and the CLI flags, then passed down.

Owns: the settings model (`model`, `policies`), the raw layers and where each key came from
(`layers`), the value parsers (`values`) and validation (`loader`, `queue`, `resilience`).
Imports only `wire` and `routing` (for the route table and the strategy names). Everything else
imports the names below from here.
"""

from sollol_proxy.config.loader import load_config
from sollol_proxy.config.model import (
    DEFAULT_OLLAMA_PORT,
    Config,
    ConfigError,
    NodeConfig,
    QueueBand,
    QueueConfig,
    Timeouts,
    normalize_node_url,
    parse_node_list,
)

__all__ = [
    "DEFAULT_OLLAMA_PORT",
    "Config",
    "ConfigError",
    "NodeConfig",
    "QueueBand",
    "QueueConfig",
    "Timeouts",
    "load_config",
    "normalize_node_url",
    "parse_node_list",
]
