"""What the proxy knows about its nodes, and the choice it makes from that.

Owns: each node's state and inventory (`fleet`), health (`health`), speeds learned from Ollama's
timing fields (`learning`), slots and memory per model (`capacity`, learned by `estimator` and
`memory`, kept per node in `beliefs`), what every node's slots hold and how often that belief was right
(`prompt_cache`), the read-only views handed to routing (`snapshot`), and the `Selector` that
feeds them to a `routing` strategy (pricing exactly only the candidates that can reach the top
of a large fleet's ranking: `pricing`) and returns a `Plan` of `Target`s, recorded in `decisions`,
or a `Hold` on a busy slot (`waiting`).
Imports `config`, `wire` and `routing`; never `admission`, `forward` or `observe`.
"""
