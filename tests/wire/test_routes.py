"""wire/routes: what Ollama answers before its middleware runs (reference 1.7 and section 2)."""

from __future__ import annotations

import pytest

from sollol_proxy.wire.routes import gin_allow, go_clean, redirected_first


@pytest.mark.parametrize(
    ("path", "clean"),
    [
        ("/api/chat", "/api/chat"),
        ("//api/chat", "/api/chat"),
        ("/api/../api/chat", "/api/chat"),
        ("/api/./chat", "/api/chat"),
        ("/../..", "/"),
        ("/api/tags/", "/api/tags/"),  # ServeMux keeps a trailing slash; gin redirects it
        ("/api/tags//", "/api/tags/"),
        ("", "/"),
    ],
)
def test_go_clean_is_path_clean_as_servemux_applies_it(path: str, clean: str) -> None:
    assert go_clean(path) == clean


@pytest.mark.parametrize(
    ("method", "raw_path", "redirected"),
    [
        ("POST", "/api/chat", False),
        ("POST", "/api/chat?x=1", False),
        ("GET", "/api/chat", False),  # a 405, after the middleware
        ("GET", "/api/tags/", True),
        ("POST", "/api/chat/", True),
        ("GET", "/api/chat/", False),  # no GET route without the slash: a 404
        ("GET", "/api/nope/", False),
        ("POST", "/api/me/", True),
        ("DELETE", "/api/user/keys/abc/", True),
        ("GET", "/v1/models/llama3.2/", True),
        ("GET", "//api/tags", True),
        ("GET", "/api/../api/tags?x=1", True),
        ("GET", "/", False),
    ],
)
def test_redirected_first(method: str, raw_path: str, redirected: bool) -> None:
    assert redirected_first(method, raw_path) is redirected


def test_gin_allow_knows_the_routes_the_proxy_only_forwards() -> None:
    assert gin_allow("GET", "/api/me") == "POST"
    assert gin_allow("GET", "/api/experimental/model-recommendations") is None
    assert gin_allow("POST", "/api/experimental/model-recommendations") == "GET"
    assert gin_allow("GET", "/api/user/keys/abc") == "DELETE"
    assert gin_allow("GET", "/api/user/keys/") is None  # gin's :param needs a segment
    assert gin_allow("GET", "/api/tags") is None
    assert gin_allow("POST", "/api/tags") == "HEAD, GET"
