"""Who may use the proxy, and for what: API keys with scopes and per-key limits, management
routes kept to this machine when no key is configured, and the Host check (Ollama's
DNS-rebinding guard) on every answer.

Owns: keys and how a client presents one (`keys`), which routes need which scope (`scopes`),
per-key limits and usage (`quota`), the middleware that applies them and what the handler asks
of a request's `Grant` (`guard`), the Host check (`hosts`), per-key metrics (`metrics`).
Imports `config` and `wire`.
"""
