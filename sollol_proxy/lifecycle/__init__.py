"""The process around the request path: background tasks started and awaited in one place,
limits on connections and headers, draining on shutdown, and reloading the configuration.

Imports only `config` and `wire`.
"""
