"""Forwarding: one request's attempts on nodes until an answer is relayed to the client.

Owns: the `Forwarder` and its retries (`forwarder`, `retry`), opening the upstream request
(`upstream`; on pooled node connections, `pool`, which run the proxy's own node protocol,
`nodewire`, whose answer head is parsed by `nodehead` and whose body, `nodebody`, is read or
`push`ed to the client), relaying the answer byte for byte (`relay`) or, for the proxy's own
sub-requests, reading it whole (`collect`), what each attempt teaches the fleet (`attempt`), the
management fan-out (`management`), the fleet views the proxy answers itself (`views`), and the
`RequestRecord` every request fills in (`record`).
Imports `config`, `wire`, `lifecycle`, `routing`, `fleet` and `admission`.
"""
