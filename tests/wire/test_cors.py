"""Ollama's CORS rules (reference 1.6), as wire/cors.py states them."""

from __future__ import annotations

import pytest

from sollol_proxy.wire.cors import (
    DEFAULT_ORIGINS,
    OLLAMA_DEFAULT,
    CorsPolicy,
    Verdict,
    canonical_header,
    origin_problem,
    split_origins,
)

HOST = "127.0.0.1:11434"


def verdict(policy: CorsPolicy, origin: str | None, host: str = HOST) -> Verdict:
    return policy.verdict(origin, host)


def test_no_origin_or_the_pages_own_address_is_no_cors_request() -> None:
    assert verdict(OLLAMA_DEFAULT, None) is Verdict.NOT_CORS
    assert verdict(OLLAMA_DEFAULT, "") is Verdict.NOT_CORS
    assert verdict(OLLAMA_DEFAULT, "http://ui.example:8080", "ui.example:8080") is Verdict.NOT_CORS
    assert verdict(OLLAMA_DEFAULT, "https://ui.example", "ui.example") is Verdict.NOT_CORS


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost",
        "https://localhost",
        "http://localhost:3000",
        "https://127.0.0.1:8443",
        "http://0.0.0.0:1",
        "app://anything",
        "file://",
        "tauri://localhost",
        "vscode-webview://abc",
        "vscode-file://vscode-app",
    ],
)
def test_ollamas_default_origins_are_allowed(origin: str) -> None:
    assert verdict(OLLAMA_DEFAULT, origin) is Verdict.ALLOWED


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://localhost.evil.example",  # `http://localhost:*` keeps its ':' (cors v1.7.2)
        "http://127.0.0.10",
        "chrome-extension://abcdef",  # extensions must be listed in OLLAMA_ORIGINS
        "HTTP://LOCALHOST",  # compared as sent, against the lower-cased list
        "null",
    ],
)
def test_anything_else_is_forbidden_by_default(origin: str) -> None:
    assert verdict(OLLAMA_DEFAULT, origin) is Verdict.FORBIDDEN


def test_configured_origins_and_wildcards() -> None:
    policy = CorsPolicy.from_origins(
        ["https://UI.example", "chrome-extension://*", "*.corp.example", "https://a*z"]
    )
    assert verdict(policy, "https://ui.example") is Verdict.ALLOWED  # normalized: lower-cased
    assert verdict(policy, "https://UI.example") is Verdict.FORBIDDEN  # ... but not the Origin
    assert verdict(policy, "chrome-extension://abcdef") is Verdict.ALLOWED
    assert verdict(policy, "https://wiki.corp.example") is Verdict.ALLOWED
    assert verdict(policy, "https://corp.example.evil") is Verdict.FORBIDDEN
    assert verdict(policy, "https://abcz") is Verdict.ALLOWED
    assert verdict(policy, "https://z") is Verdict.FORBIDDEN
    assert verdict(policy, "http://localhost:5173") is Verdict.ALLOWED  # defaults still apply


def test_headers_for_an_allowed_origin() -> None:
    assert OLLAMA_DEFAULT.headers("http://localhost:3000", preflight=False) == [
        ("Vary", "Origin"),
        ("Access-Control-Allow-Origin", "http://localhost:3000"),
    ]
    assert OLLAMA_DEFAULT.headers("http://localhost:3000", preflight=True) == [
        (
            "Access-Control-Allow-Headers",
            "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,Openai-Beta,"
            "X-Stainless-Arch,X-Stainless-Async,X-Stainless-Custom-Poll-Interval,"
            "X-Stainless-Helper-Method,X-Stainless-Lang,X-Stainless-Os,"
            "X-Stainless-Package-Version,X-Stainless-Poll-Helper,X-Stainless-Retry-Count,"
            "X-Stainless-Runtime,X-Stainless-Runtime-Version,X-Stainless-Timeout",
        ),
        ("Access-Control-Allow-Methods", "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"),
        ("Access-Control-Max-Age", "43200"),
        ("Vary", "Origin"),
        ("Vary", "Access-Control-Request-Method"),
        ("Vary", "Access-Control-Request-Headers"),
        ("Access-Control-Allow-Origin", "http://localhost:3000"),
    ]


def test_a_star_allows_every_origin_with_a_star_and_no_vary() -> None:
    policy = CorsPolicy.from_origins(["*"])
    assert verdict(policy, "http://anything.example") is Verdict.ALLOWED
    assert policy.headers("http://x", preflight=False) == [("Access-Control-Allow-Origin", "*")]
    preflight = policy.headers("http://x", preflight=True)
    assert preflight[-1] == ("Access-Control-Allow-Origin", "*")
    assert not [h for h in preflight if h[0] == "Vary"]


def test_origins_are_written_as_ollama_origins_is() -> None:
    assert split_origins("") == []
    assert split_origins(' "https://a,https://b" ') == ["https://a", "https://b"]
    assert split_origins("https://a, https://b") == ["https://a", " https://b"]  # not trimmed
    assert origin_problem(" https://b") is not None  # ... so Ollama would refuse to start
    assert origin_problem("ui.example") is not None
    assert origin_problem("https://*.a.*") == "only one '*' is allowed, got 'https://*.a.*'"
    assert origin_problem("*.example") is None
    assert origin_problem("moz-extension://id") is None
    assert all(origin_problem(o) is None for o in DEFAULT_ORIGINS)


def test_canonical_header_keys_are_gos() -> None:
    assert canonical_header("openai-beta") == "Openai-Beta"
    assert canonical_header("x-stainless-os") == "X-Stainless-Os"
    assert canonical_header("CONTENT-TYPE") == "Content-Type"
