"""What is Ollama's, not the proxy's: the route table, which headers cross a hop, how a body is
peeked at, Go's JSON encoding and Ollama's error envelopes.

Imports nothing else from sollol_proxy: every other package may import it.
"""
