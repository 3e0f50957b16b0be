"""sollol-proxy: one Ollama address in front of a fleet of Ollama servers.

`connect()` is the Python entry point for programs that talk to the proxy (see
`sollol_proxy.embed.client`; it needs the `client` extra)."""

from sollol_proxy.embed.client import connect

__version__ = "0.1.0"
__all__ = ["__version__", "connect"]
