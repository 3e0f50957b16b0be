"""The book of open client connections, in all and per client address."""

from __future__ import annotations

from collections import Counter

from sollol_proxy.config import Config


class ConnectionBook:
    """The connections accepted, in all and per client address; the ones refused are answered
    with a 503 (or closed) and counted apart, so that they never hold a slot themselves."""

    def __init__(self) -> None:
        self.accepted = 0
        self.refused = 0
        self.by_client: Counter[str] = Counter()

    def open(self, client: str, config: Config) -> str | None:
        """Take a slot for a new connection; the limit it is over when none is left."""
        if self.accepted >= config.max_connections:
            over = f"too many open connections (limit {config.max_connections})"
        elif self.by_client[client] >= config.client_limits.max_per_client:
            over = (
                "too many open connections from this client"
                f" (limit {config.client_limits.max_per_client} per client)"
            )
        else:
            self.accepted += 1
            self.by_client[client] += 1
            return None
        self.refused += 1
        return over

    def close(self, client: str, refused: bool) -> None:
        if refused:
            self.refused -= 1
            return
        self.accepted -= 1
        self.by_client[client] -= 1
        if not self.by_client[client]:
            del self.by_client[client]
