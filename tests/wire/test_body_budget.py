"""The body budget (wire/body_budget.py, limits.max_body_memory) over real sockets, on both
engines: bodies waiting for the node's one busy slot fill it; a burst beyond it is answered 503
before its body is read, and its connection closed; requests under it are served; one client
address gets at most its share; everything held is given back when the requests end.

Clients come from distinct loopback addresses (127.0.0.x), which the proxy sees as distinct
clients, as it would hosts on a network.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sollol_proxy.config import ConfigError, load_config
from sollol_proxy.wire.body_budget import BodyBudget
from tests.conftest import ClusterFactory

MODEL = "llama3.2"
BODY = 900_000  # below the 1 MiB body limit; four fit in the 4 MiB budget, one per client
SETTINGS = {"limits__max_body_bytes": "1MiB", "limits__max_body_memory": "4MiB"}
ENGINES = ("fast", "aiohttp")


def chat(size: int) -> bytes:
    """A non-streamed chat body of exactly `size` bytes, answered with two tokens."""
    head = b'{"model":"llama3.2","stream":false,"options":{"num_predict":2},"messages":['
    head += b'{"role":"user","content":"'
    tail = b'"}]}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


def request_head(path: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{framing}\r\n\r\n".encode()


class Client:
    """One raw connection from its own loopback address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str, address: str) -> Client:
        port = urlsplit(url).port
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        body = await self.reader.readexactly(int(headers["Content-Length"]))
        return int(lines[0].split()[1]), headers, body

    async def closed_by_proxy(self) -> bool:
        """Whether the proxy closed the connection: at once, without reading the rest (aiohttp
        would otherwise linger up to 10 s reading it)."""
        return await asyncio.wait_for(self.reader.read(), 2) == b""

    def close(self) -> None:
        self.writer.close()


async def busy_slot(url: str) -> Client:
    """A long stream on the node's one slot; closing it frees the slot."""
    client = await Client.open(url, "127.0.0.1")
    body = b'{"model":"llama3.2","prompt":"go","options":{"num_predict":100000}}'
    await client.send(request_head("/api/generate", len(body)) + body)
    assert (await asyncio.wait_for(client.reader.readline(), 10)).startswith(b"HTTP/1.1 200")
    return client


async def budget(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(url + "/metrics") as response:
        text = (await response.read()).decode()
    return {
        sample.name + "".join(f"[{v}]" for v in sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("sollol_body_")
    }


async def held_becomes(http: aiohttp.ClientSession, url: str, expected: int) -> None:
    for _ in range(100):
        if (await budget(http, url))["sollol_body_bytes_held"] == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"held {(await budget(http, url))}, expected {expected}")


async def share_held(
    cluster: ClusterFactory, http: aiohttp.ClientSession, engine: str
) -> tuple[str, Client, Client, float]:
    """A node's one slot busy, and client 127.0.0.2's whole share of the budget held by a body
    waiting for it: the proxy's URL, the busy stream, that client, and what was held before."""
    made = await cluster(
        dict(name="a", models=[MODEL], token_delay=0.01), listen__engine=engine, **SETTINGS
    )
    url = made.url
    busy = await busy_slot(url)
    held = (await budget(http, url))["sollol_body_bytes_held"]
    first = await Client.open(url, "127.0.0.2")
    await first.send(request_head("/api/chat", BODY) + chat(BODY))
    await held_becomes(http, url, held + BODY)
    return url, busy, first, held


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_burst_over_the_budget_is_refused_and_the_budget_comes_back_whole(
    cluster: ClusterFactory, http: aiohttp.ClientSession, engine: str
) -> None:
    made = await cluster(
        dict(name="a", models=[MODEL], token_delay=0.01), listen__engine=engine, **SETTINGS
    )
    url = made.url
    assert (await budget(http, url))["sollol_body_bytes_limit"] == 4 * 2**20
    busy = await busy_slot(url)
    held = (await budget(http, url))["sollol_body_bytes_held"]  # the stream's own small body
    queued = [await Client.open(url, f"127.0.0.{10 + n}") for n in range(4)]
    for client in queued:
        await client.send(request_head("/api/chat", BODY) + chat(BODY))
    await held_becomes(http, url, held + 4 * BODY)  # all four wait in the queue, held

    # Two more: refused on their declared length, before a byte of the body is sent.
    for n in range(2):
        late = await Client.open(url, f"127.0.0.{20 + n}")
        await late.send(request_head("/api/chat", BODY))
        status, headers, body = await late.answer()
        assert status == 503 and headers["Retry-After"] == "5", (status, headers)
        assert orjson.loads(body)["error"].startswith(
            "sollol-proxy is holding too many request bodies"
        )
        assert headers.get("Connection") == "close" and await late.closed_by_proxy()
    # A request within what is left is served meanwhile (/api/show takes no slot).
    show = await Client.open(url, "127.0.0.30")
    payload = b'{"model":"llama3.2"}'
    await show.send(request_head("/api/show", len(payload)) + payload)
    assert (await show.answer())[0] == 200
    show.close()

    queued[0].close()  # a client that gives up while queued gives its body back
    await held_becomes(http, url, held + 3 * BODY)
    busy.close()  # the slot frees: the three left are served in turn
    for client in queued[1:]:
        status, _, body = await client.answer()
        assert status == 200 and orjson.loads(body)["done"] is True
        client.close()
    await held_becomes(http, url, 0)
    counts = await budget(http, url)
    assert counts["sollol_body_refused_total[total]"] == 2
    assert counts["sollol_body_refused_total[client]"] == 0


@pytest.mark.parametrize("engine", ENGINES)
async def test_one_client_holds_at_most_its_share_and_others_still_get_in(
    cluster: ClusterFactory, http: aiohttp.ClientSession, engine: str
) -> None:
    # A quarter of 4 MiB is one 1 MiB body: the client's first body waits in the queue...
    url, busy, first, held = await share_held(cluster, http, engine)
    # ...its second is refused on its length, its chunked third as it grows past the share...
    second = await Client.open(url, "127.0.0.2")
    await second.send(request_head("/api/chat", BODY))
    status, _, body = await second.answer()
    assert status == 503
    assert orjson.loads(body)["error"].startswith("too many request bodies from this client")
    assert await second.closed_by_proxy()
    chunked = await Client.open(url, "127.0.0.2")
    await chunked.send(request_head("/api/chat", None))
    for _ in range(3):  # 192 KiB: past the 1 MiB share, still under the body limit
        await chunked.send(b"10000\r\n" + b" " * 0x10000 + b"\r\n")
    status, headers, _ = await chunked.answer()
    assert status == 503 and headers["Retry-After"] == "5"
    assert await chunked.closed_by_proxy()
    await held_becomes(http, url, held + BODY)  # what the chunked body had counted is back
    # ...while another client's body of the same size is taken.
    other = await Client.open(url, "127.0.0.3")
    await other.send(request_head("/api/chat", BODY) + chat(BODY))
    await held_becomes(http, url, held + 2 * BODY)

    # A batch job's documents count in the same share as a model request's body.
    batch = await Client.open(url, "127.0.0.2")
    await batch.send(request_head("/api/embed/batch", BODY))
    status, _, body = await batch.answer()
    assert status == 503
    assert orjson.loads(body)["error"].startswith("too many request bodies from this client")
    assert await batch.closed_by_proxy()

    busy.close()
    for client in (first, other):
        assert (await client.answer())[0] == 200
        client.close()
    await held_becomes(http, url, 0)
    counts = await budget(http, url)
    assert counts["sollol_body_refused_total[client]"] == 3
    assert counts["sollol_body_refused_total[total]"] == 0


def test_the_default_budget_is_sixteen_of_the_largest_bodies() -> None:
    config = load_config(None, env={}, overrides={"nodes": ["a:1"]})
    assert config.max_body_memory == 16 * config.max_body_bytes == 2**30
    config = load_config(
        None,
        env={"SOLLOL_MAX_BODY_MEMORY": "256MiB"},
        overrides={"nodes": ["a:1"], "limits.max_body_bytes": "1MiB"},
    )
    assert config.max_body_memory == 256 * 2**20
    assert config.to_dict()["limits"]["max_body_memory"] == 256 * 2**20
    with pytest.raises(ConfigError, match=r"limits\.max_body_memory.*at least limits\.max_body"):
        load_config(None, env={}, overrides={"nodes": ["a:1"], "limits.max_body_memory": "1MiB"})


def test_a_client_gets_a_quarter_of_the_budget_and_never_less_than_one_largest_body() -> None:
    mib = 2**20
    assert BodyBudget(1024 * mib, 64 * mib).per_client == 256 * mib  # the defaults
    assert BodyBudget(128 * mib, 64 * mib).per_client == 64 * mib
    assert BodyBudget(64 * mib, 64 * mib).per_client == 64 * mib
    budget = BodyBudget(128 * mib, 64 * mib)
    budget.resize(1024 * mib, 64 * mib)  # a reload
    assert (budget.total, budget.per_client) == (1024 * mib, 256 * mib)


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_body_the_budget_has_no_room_for_is_not_invited_by_100_continue(
    cluster: ClusterFactory, http: aiohttp.ClientSession, engine: str
) -> None:
    url, busy, first, _ = await share_held(cluster, http, engine)
    expect = b"Expect: 100-continue\r\n\r\n"
    # The same client's next body would be refused: it gets the 503 at once, no 100 Continue.
    second = await Client.open(url, "127.0.0.2")
    await second.send(request_head("/api/chat", BODY)[:-2] + expect)
    status, _, body = await second.answer()
    assert status == 503
    assert orjson.loads(body)["error"].startswith("too many request bodies from this client")
    assert await second.closed_by_proxy()
    # Another client's body fits: it is invited.
    other = await Client.open(url, "127.0.0.3")
    await other.send(request_head("/api/chat", BODY)[:-2] + expect)
    interim = await asyncio.wait_for(other.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    other.close()
    busy.close()
    assert (await first.answer())[0] == 200
    first.close()
