"""Embeddings at fleet scale: one large call spread over the nodes, small concurrent calls
merged, and batch jobs that survive a restart.

Owns: reading an embedding call (`inputs`), cutting it into sub-batches sized by node speed
(`split`, pure) and merging the answers back byte for byte (`merge`, pure), the learned
embedding speed per node (`speed`), running sub-batches through the same routing, admission
and forwarding as client requests (`subcall`), the split itself (`splitter`), dynamic batching
of small calls (`coalesce`), what the handler calls (`service`), batch jobs (`jobstore`: on
SQLite in `store`, or shared by replicas in Redis in `redis_jobs` and its `redis_scripts`; run by
`jobs` and `jobrun`, their HTTP API in `api`), and the Python entry point `connect()` (`client`).
Imports `config`, `wire`, `routing`, `fleet`, `admission` and `forward`; `observe` reads it.
"""
