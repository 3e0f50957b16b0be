"""Observability: everything that reads what happened, never decides anything.

Owns: Prometheus metrics (`metrics`, bounded `labels`), rolling statistics (`stats`), the access
log and log format (`accesslog`, `logformat`), the last hour as time series (`timeseries`), the
dashboard's JSON and page (`dashboard`), batch jobs as the page and /metrics show them
(`batches`), and the /sollol/* JSON endpoints (`admin`).
Imports any package below it (`config`, `wire`, `lifecycle`, `fleet`, `admission`, `forward`,
`embed`).
"""
