"""State that replicas of the proxy share in Redis (`state.backend: redis`), so that several
replicas behave as one: slot leases per node and model, the order of waiting requests across
replicas, node ejections, learned speeds, the prompt-cache map, the decision log, and the
connection with its fallback to local state.

Owns: the one Redis client of the process and whether Redis answers (`link`), the Lua scripts
(`scripts`), the admission gate and the cross-replica queue order (`slots`, its refused requests
waiting in `parking`), what a request holds (`held`), the slot leases and their ordered writer
(`leases`, its operations and pipelines in `lease_ops`, the slots handed to this replica until
one of its requests takes them in `handed`),
shared ejections (`health`), learned speeds (`learning`), the prompt-cache map
(`prompt_cache`), the decision log (`decisions`), what `/metrics` and the dashboard show of it
(`report`), and the wiring of one replica's parts (`state`).
Redis failing is never a request failing: every operation is bounded by `state.timeout`, and
past it the replica decides alone until Redis answers again.
Imports `config`, `wire`, `routing`, `lifecycle`, `fleet` and `admission`.
"""
