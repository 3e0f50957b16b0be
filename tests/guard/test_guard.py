"""API keys end to end, over real sockets: who gets in, what a key may do, its limits."""

from __future__ import annotations

import socket

import aiohttp
import ollama
import openai
import orjson
import pytest

from sollol_proxy.app import apply_config
from sollol_proxy.config import load_config
from sollol_proxy.guard.keys import new_key
from tests.conftest import Cluster, ClusterFactory

MODEL = "llama3.2:latest"
CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'
USER_KEY, USER_HASH = new_key()
ADMIN_KEY, ADMIN_HASH = new_key()


def keyed(**user: object) -> list[dict[str, object]]:
    return [
        {"name": "alice", "sha256": USER_HASH, **user},
        {"name": "ops", "sha256": ADMIN_HASH, "scope": "admin"},
    ]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def fleet(cluster: ClusterFactory, **settings: object) -> Cluster:
    return await cluster(
        dict(name="a", models=[MODEL, "qwen2.5:7b"], num_parallel=4),
        dict(name="b", models=[MODEL]),
        **settings,
    )


async def test_no_key_or_a_wrong_key_gets_401_in_the_routes_envelope(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await fleet(cluster, auth__keys=keyed())
    async with http.post(made.url + "/api/chat", data=CHAT) as response:
        assert response.status == 401
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="sollol-proxy"'
        assert orjson.loads(await response.read()) == {
            "error": "sollol-proxy: an API key is required (Authorization: Bearer <key>)"
        }
    async with http.post(
        made.url + "/v1/chat/completions", data=CHAT, headers=bearer("sollol-wrong")
    ) as response:
        assert response.status == 401
        error = orjson.loads(await response.read())["error"]
        assert error["message"] == "sollol-proxy: invalid API key"
    async with http.get(made.url + "/sollol/nodes") as response:
        assert response.status == 401  # the proxy's own pages need a key too
    async with http.get(made.url + "/") as response:
        assert response.status == 200  # the liveness line stays open for load balancers
    assert all(r.path != "/api/chat" for n in made.nodes for r in n.requests)


async def test_a_user_key_serves_inference_but_not_management_or_pinning(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await fleet(cluster, auth__keys=keyed())
    async with http.post(made.url + "/api/chat", data=CHAT, headers=bearer(USER_KEY)) as response:
        assert response.status == 200
    async with http.get(made.url + "/api/tags", headers=bearer(USER_KEY)) as response:
        assert response.status == 200
    delete = b'{"model":"llama3.2"}'
    async with http.delete(
        made.url + "/api/delete", data=delete, headers=bearer(USER_KEY)
    ) as response:
        assert response.status == 403
        assert orjson.loads(await response.read()) == {
            "error": "API key 'alice' (scope user) may not use this route"
        }
    async with http.post(
        made.url + "/api/chat", data=CHAT, headers={**bearer(USER_KEY), "X-Sollol-Node": "b"}
    ) as response:
        assert response.status == 403
        assert "may not pin a node with X-Sollol-Node" in (await response.text())
    assert made.node("a").has_model(MODEL)  # nothing was deleted
    async with http.delete(
        made.url + "/api/delete", data=delete, headers=bearer(ADMIN_KEY)
    ) as response:
        assert response.status == 200
    assert not made.node("a").has_model(MODEL) and not made.node("b").has_model(MODEL)


async def test_the_key_is_not_forwarded_unless_configured(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await fleet(cluster, auth__keys=keyed())
    async with http.post(made.url + "/api/chat", data=CHAT, headers=bearer(USER_KEY)) as response:
        assert response.status == 200
        node = made.node(response.headers["X-Sollol-Node"])
    assert "Authorization" not in node.requests[-1].headers
    made = await fleet(cluster, auth__keys=keyed(), auth__forward_authorization=True)
    headers = {"X-Api-Key": USER_KEY}  # as the Anthropic SDK sends it
    async with http.post(made.url + "/api/chat", data=CHAT, headers=headers) as response:
        assert response.status == 200
        node = made.node(response.headers["X-Sollol-Node"])
    assert node.requests[-1].headers["X-Api-Key"] == USER_KEY


async def test_models_outside_the_keys_globs_get_403(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await fleet(cluster, auth__keys=keyed(models=["llama3.2:*"]))
    async with http.post(made.url + "/api/chat", data=CHAT, headers=bearer(USER_KEY)) as response:
        assert response.status == 200
    other = CHAT.replace(b"llama3.2", b"qwen2.5:7b")
    async with http.post(
        made.url + "/v1/chat/completions", data=other, headers=bearer(USER_KEY)
    ) as response:
        assert response.status == 403
        error = orjson.loads(await response.read())["error"]
        assert error["message"] == "API key 'alice' may not use model 'qwen2.5:7b'"
    unreadable = b'{"messages":[]}'  # no model the proxy can check: refused, not guessed
    async with http.post(
        made.url + "/api/chat", data=unreadable, headers=bearer(USER_KEY)
    ) as response:
        assert response.status == 403


async def test_a_keys_priority_is_capped(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await fleet(cluster, auth__keys=keyed(max_priority=3))
    for key, expected in ((USER_KEY, 3), (ADMIN_KEY, 10)):
        headers = {**bearer(key), "X-Sollol-Priority": "critical"}
        async with http.post(made.url + "/api/chat", data=CHAT, headers=headers) as response:
            assert response.status == 200
        async with http.get(
            made.url + "/sollol/decisions?limit=1", headers=bearer(ADMIN_KEY)
        ) as response:
            assert (await response.json())["decisions"][0]["priority"] == expected


async def test_concurrency_and_request_rate_limits_answer_429_with_retry_after(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL], num_parallel=4, token_delay=0.05),
        auth__keys=keyed(max_concurrent=1, requests_per_minute=3),
    )
    slow = CHAT.replace(b'"stream":false', b'"stream":true,"options":{"num_predict":20}')
    async with http.post(made.url + "/api/chat", data=slow, headers=bearer(USER_KEY)) as first:
        assert first.status == 200
        async with http.post(made.url + "/api/chat", data=CHAT, headers=bearer(USER_KEY)) as second:
            assert second.status == 429 and second.headers["Retry-After"] == "1"
            assert "has 1 requests in progress (limit 1)" in await second.text()
        await first.read()
    for _ in range(2):
        async with http.post(made.url + "/api/chat", data=CHAT, headers=bearer(USER_KEY)) as ok:
            assert ok.status == 200
    async with http.post(made.url + "/api/chat", data=CHAT, headers=bearer(USER_KEY)) as limited:
        assert limited.status == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert "made 3 requests in the last minute (limit 3 per minute)" in await limited.text()
    async with http.post(made.url + "/api/chat", data=CHAT, headers=bearer(ADMIN_KEY)) as other:
        assert other.status == 200  # limits are per key


async def test_tokens_per_minute_count_ollamas_own_counts(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await fleet(cluster, auth__keys=keyed(tokens_per_minute=10))
    async with http.post(made.url + "/api/chat", data=CHAT, headers=bearer(USER_KEY)) as response:
        final = orjson.loads(await response.read())
    used = final["prompt_eval_count"] + final["eval_count"]
    assert used >= 10  # this one crossed the limit; the next waits
    v1 = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}'
    async with http.post(
        made.url + "/v1/chat/completions", data=v1, headers=bearer(USER_KEY)
    ) as response:
        assert response.status == 429
        error = orjson.loads(await response.read())["error"]
        assert error["message"] == (
            f"API key 'alice' used {used} tokens in the last minute (limit 10 per minute)"
        )
    async with http.get(made.url + "/metrics", headers=bearer(ADMIN_KEY)) as response:
        text = await response.text()
    assert (
        f'sollol_key_tokens_total{{key="alice",kind="input"}} {final["prompt_eval_count"]}.0'
        in text
    )
    assert 'sollol_key_refused_total{key="alice",reason="tokens"} 1.0' in text
    assert 'sollol_key_requests_total{key="alice"} 1.0' in text
    assert 'sollol_key_refused_total{key="none",reason="unauthorized"}' not in text


async def test_v1_answers_are_counted_from_their_usage(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await fleet(cluster, auth__keys=keyed())
    v1 = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}'
    async with http.post(
        made.url + "/v1/chat/completions", data=v1, headers=bearer(USER_KEY)
    ) as response:
        usage = orjson.loads(await response.read())["usage"]
    async with http.get(made.url + "/metrics", headers=bearer(ADMIN_KEY)) as response:
        text = await response.text()
    expected = usage["completion_tokens"]
    assert f'sollol_key_tokens_total{{key="alice",kind="output"}} {expected}.0' in text


async def test_official_clients_send_their_keys(
    cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await fleet(cluster, auth__keys=keyed())
    monkeypatch.setenv("OLLAMA_API_KEY", USER_KEY)  # ollama-python sends it as a Bearer token
    reply = await ollama.AsyncClient(host=made.url).chat(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.done and reply.message.content
    with pytest.raises(ollama.ResponseError) as refused:
        await ollama.AsyncClient(host=made.url).delete("llama3.2")
    assert refused.value.status_code == 403
    monkeypatch.delenv("OLLAMA_API_KEY")
    with pytest.raises(ollama.ResponseError) as missing:
        await ollama.AsyncClient(host=made.url).list()
    assert missing.value.status_code == 401 and "API key is required" in missing.value.error

    client = openai.AsyncOpenAI(base_url=made.url + "/v1", api_key=USER_KEY, max_retries=0)
    completion = await client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        await client.models.retrieve("x", extra_headers={"X-Sollol-Node": "a"})
    limited = await fleet(cluster, auth__keys=keyed(requests_per_minute=1))
    client = openai.AsyncOpenAI(base_url=limited.url + "/v1", api_key=USER_KEY, max_retries=0)
    await client.models.list()
    with pytest.raises(openai.RateLimitError) as over:
        await client.models.list()
    assert over.value.response.headers["Retry-After"]
    wrong = openai.AsyncOpenAI(base_url=made.url + "/v1", api_key="sollol-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        await wrong.models.list()
    assert denied.value.status_code == 401
    assert denied.value.body == {  # type: ignore[comparison-overlap]
        "message": "sollol-proxy: invalid API key",
        "type": "api_error",
        "param": None,
        "code": None,
    }


def _own_address() -> str:
    """This machine's address on its default route: a peer that is not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks the route
        address = probe.getsockname()[0]
    assert not address.startswith("127."), "the test needs an address other than loopback"
    return address


async def test_without_keys_management_answers_only_this_machine(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    address = _own_address()
    made = await fleet(cluster, listen__host=address)
    url = made.url
    assert address in url
    body = b'{"model":"llama3.2"}'
    for headers in ({}, {"X-Sollol-Node": "all"}):
        async with http.delete(url + "/api/delete", data=body, headers=headers) as response:
            assert response.status == 403
            assert "answer only clients on the proxy's machine" in (await response.json())["error"]
    async with http.post(
        url + "/api/pull", data=b'{"model":"llama3.2","insecure":true}'
    ) as response:
        assert response.status == 403
    async with http.post(url + "/api/chat", data=CHAT) as response:
        assert response.status == 200  # inference is as before
    assert made.node("a").has_model(MODEL) and made.node("b").has_model(MODEL)
    opened = await fleet(cluster, listen__host=address, auth__open_management=True)
    async with http.delete(opened.url + "/api/delete", data=body) as response:
        assert response.status == 200


async def test_a_reload_changes_the_keys_and_keeps_their_usage(
    cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    made = await fleet(cluster, auth__keys=keyed(requests_per_minute=1))
    async with http.post(made.url + "/api/chat", data=CHAT, headers=bearer(USER_KEY)) as response:
        assert response.status == 200
    new_user, new_hash = new_key()
    reloaded = load_config(
        None,
        env={},
        overrides={
            "nodes": [{"url": n.url, "name": n.name} for n in made.nodes],
            "listen.host": "127.0.0.1",
            "auth.keys": [
                {"name": "alice", "sha256": USER_HASH, "requests_per_minute": 1},
                {"name": "bob", "sha256": new_hash},
            ],
        },
    )
    assert reloaded.to_dict()["auth"]["keys"][1]["sha256"] == "<redacted>"
    apply_config(made.proxy.runner.app, reloaded)
    async with http.post(made.url + "/api/chat", data=CHAT, headers=bearer(new_user)) as response:
        assert response.status == 200
    async with http.post(made.url + "/api/chat", data=CHAT, headers=bearer(ADMIN_KEY)) as response:
        assert response.status == 401  # the admin key was removed
    async with http.post(made.url + "/api/chat", data=CHAT, headers=bearer(USER_KEY)) as response:
        assert response.status == 429  # its minute's count survived the reload
