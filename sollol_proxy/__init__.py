"""sollol-proxy: one Ollama address in front of a fleet of Ollama servers."""

__version__ = "0.1.0"
