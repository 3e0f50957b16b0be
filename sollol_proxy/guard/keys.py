"""API keys: made by `sollol-proxy keys new`, stored by the configuration as SHA-256 hashes, and
presented by clients as `Authorization: Bearer <key>` (what ollama-python sends from
`OLLAMA_API_KEY`, and what the OpenAI SDK and Open WebUI send) or `X-Api-Key` (the Anthropic SDK).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping

PREFIX = "sollol-"  # lets secret scanners and people recognise a proxy key
# No key is longer; a longer header is not hashed at all.
MAX_KEY_CHARS = 256
# Headers that carry a proxy key, and are therefore not forwarded (unless configured).
CREDENTIAL_HEADERS = ("Authorization", "X-Api-Key")


def new_key() -> tuple[str, str]:
    """A new random key (256 bits) and its SHA-256, the one to write in `auth.keys`."""
    key = PREFIX + secrets.token_urlsafe(32)
    return key, digest(key)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries, or None. A dictionary lookup of its hash then finds the
    configured key: a timing difference could only tell an attacker about SHA-256 outputs."""
    value = headers.get("Authorization")
    if value is not None:
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
    else:
        token = headers.get("X-Api-Key", "").strip()
    return token if 0 < len(token) <= MAX_KEY_CHARS else None
