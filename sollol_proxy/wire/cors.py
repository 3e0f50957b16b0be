"""CORS as Ollama answers it (reference 1.6): gin-contrib/cors v1.7.2 as server/routes.go
configures it, with the origins of envconfig.AllowedOrigins().

Pure: a request's Origin and Host in, a verdict and the headers to add out. The proxy applies it
to the answers it makes itself; the simulated node to all of its answers, as Ollama does.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

# envconfig.AllowedOrigins appends these after OLLAMA_ORIGINS: they are always allowed.
DEFAULT_ORIGINS: tuple[str, ...] = (
    *(
        origin
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for origin in (f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)

# cors.DefaultConfig()'s methods, upper-cased and joined without spaces.
ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
# routes.go replaces the default AllowHeaders; gin-contrib lower-cases them, then writes each
# with http.CanonicalHeaderKey.
_ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "User-Agent",
    "Accept",
    "X-Requested-With",
    "OpenAI-Beta",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-custom-poll-interval",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-poll-helper",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
)
MAX_AGE = "43200"  # 12 hours, in seconds
# Config.Validate with AllowBrowserExtensions: an origin without '*' must start with one of these.
SCHEMES = (
    "http://",
    "https://",
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
)


def canonical_header(name: str) -> str:
    """Go's http.CanonicalHeaderKey for a token: `openai-beta` -> `Openai-Beta`."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


ALLOW_HEADERS = ",".join(canonical_header(h) for h in _ALLOW_HEADERS)


def split_origins(value: str) -> list[str]:
    """OLLAMA_ORIGINS' syntax: the value trimmed of blanks and quotes (envconfig.Var), then split
    on commas, each entry kept as it is (a space after a comma is part of the next origin)."""
    text = value.strip().strip("\"'")
    return text.split(",") if text else []


def origin_problem(origin: str) -> str | None:
    """Why Ollama would refuse to start with `origin` configured (gin-contrib/cors panics)."""
    if "*" not in origin and not origin.startswith(SCHEMES):
        return f"must contain '*' or start with {', '.join(SCHEMES)}, got {origin!r}"
    if origin.count("*") > 1:
        return f"only one '*' is allowed, got {origin!r}"
    return None


class Verdict(enum.Enum):
    NOT_CORS = "not_cors"  # no Origin, or the page's own address: nothing is added
    ALLOWED = "allowed"
    FORBIDDEN = "forbidden"  # 403 with an empty body


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    allow_all: bool  # '*' is one of the origins: Access-Control-Allow-Origin: *
    exact: frozenset[str]
    wildcards: tuple[tuple[str, str], ...]  # (before '*', after '*'), '*' standing for an end

    @classmethod
    def from_origins(cls, configured: Iterable[str]) -> CorsPolicy:
        """The configured origins (already validated), then Ollama's defaults."""
        origins = [*configured, *DEFAULT_ORIGINS]
        wildcards = []
        for origin in origins:
            if "*" not in origin:
                continue
            i = origin.index("*")
            if i == 0:
                wildcards.append(("*", origin[1:]))
            elif i == len(origin) - 1:
                wildcards.append((origin[:i], "*"))
            else:
                wildcards.append((origin[:i], origin[i + 1 :]))
        return cls(
            allow_all="*" in origins,
            # normalize(): trimmed and lower-cased, compared with the Origin as sent.
            exact=frozenset(o.strip().lower() for o in origins),
            wildcards=tuple(wildcards),
        )

    def verdict(self, origin: str | None, host: str) -> Verdict:
        if not origin or origin in (f"http://{host}", f"https://{host}"):
            return Verdict.NOT_CORS
        return Verdict.ALLOWED if self._allows(origin) else Verdict.FORBIDDEN

    def _allows(self, origin: str) -> bool:
        if self.allow_all or origin in self.exact:
            return True
        for before, after in self.wildcards:
            if before == "*" and origin.endswith(after):
                return True
            if after == "*" and origin.startswith(before):
                return True
            if origin.startswith(before) and origin.endswith(after):
                return True
        return False

    def headers(self, origin: str, *, preflight: bool) -> list[tuple[str, str]]:
        """What an allowed request's answer carries (a preflight's: its 204's only headers)."""
        out = (
            [
                ("Access-Control-Allow-Headers", ALLOW_HEADERS),
                ("Access-Control-Allow-Methods", ALLOW_METHODS),
                ("Access-Control-Max-Age", MAX_AGE),
            ]
            if preflight
            else []
        )
        if self.allow_all:
            return [*out, ("Access-Control-Allow-Origin", "*")]
        vary = (
            ["Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"]
            if preflight
            else ["Origin"]
        )
        return [*out, *(("Vary", v) for v in vary), ("Access-Control-Allow-Origin", origin)]


OLLAMA_DEFAULT = CorsPolicy.from_origins(())
