"""Many Ollama nodes, as far as probes and a held stream can tell, in one small process.

For the proxy's scale benchmark (scale.py): a thousand simulated nodes would cost the machine
more than the proxy being measured. One aiohttp app listens on `--ports` ports, each a node to
the proxy; it answers the probes with what a simulated node answers (`/api/version`, `/api/tags`,
`/api/ps` with the model loaded, bytes taken from a `SimulatedNode` at start) and every
`/api/generate` with its first NDJSON line at once, then holds the stream until released.

Run as `python -m sollol_proxy.bench.stubfleet --ports N`: it prints the ports as one JSON line,
then serves until stdin closes. On the first port, `GET /stub/probes` lists when each probe
came (`time.monotonic()`, the same clock in every process) and from which port, `GET
/stub/streams` counts the streams held, and `POST /stub/release` ends them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import time

import aiohttp
import orjson
from aiohttp import web

from sollol_proxy.simulator import SimulatedNode

MODEL = "llama3.2:latest"
NDJSON = "application/x-ndjson"
FIRST = b'{"model":"llama3.2","created_at":"2026-01-01T00:00:00Z","response":"Hi","done":false}\n'
LAST = (
    b'{"model":"llama3.2","created_at":"2026-01-01T00:00:00Z","response":"","done":true,'
    b'"done_reason":"stop","total_duration":1000000,"load_duration":0,"prompt_eval_count":1,'
    b'"prompt_eval_duration":100000,"eval_count":1,"eval_duration":100000}\n'
)


async def _node_answers() -> dict[str, bytes]:
    """The probe answers of a simulated node with the model loaded."""
    node = SimulatedNode(name="stub", models=[MODEL], deterministic=True)
    await node.start(port=0)
    answers = {}
    try:
        async with aiohttp.ClientSession() as http:
            body = b'{"model":"llama3.2","prompt":"x","options":{"num_predict":1}}'
            async with http.post(node.url + "/api/generate", data=body) as response:
                await response.read()
            for path in ("/api/version", "/api/tags", "/api/ps"):
                async with http.get(node.url + path) as response:
                    answers[path] = await response.read()
    finally:
        await node.stop()
    return answers


class StubFleet:
    def __init__(self, answers: dict[str, bytes]) -> None:
        self._answers = answers
        self.probes: list[tuple[float, int]] = []
        self.held = 0
        self._release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        for path in self._answers:
            app.router.add_get(path, self._probe)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_get("/stub/probes", self._probes)
        app.router.add_get("/stub/streams", self._streams)
        app.router.add_post("/stub/release", self._released)
        return app

    async def _probe(self, request: web.Request) -> web.Response:
        if request.path == "/api/version":
            port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
            self.probes.append((time.monotonic(), port))
        body = self._answers[request.path]
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        await response.write(FIRST)
        self.held += 1
        try:
            await self._release.wait()
        finally:
            self.held -= 1
        with contextlib.suppress(ConnectionError):  # the client may be gone by then
            await response.write(LAST)
            await response.write_eof()
        return response

    async def _probes(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.probes), content_type="application/json")

    async def _streams(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.held), content_type="application/json")

    def release(self) -> None:
        """End the streams held now; later ones are held again."""
        self._release.set()
        self._release = asyncio.Event()

    async def _released(self, request: web.Request) -> web.Response:
        self.release()
        return web.Response(body=b"{}", content_type="application/json")


async def serve(ports: int) -> None:
    fleet = StubFleet(await _node_answers())
    runner = web.AppRunner(fleet.app(), access_log=None)
    await runner.setup()
    bound = []
    for _ in range(ports):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # the port the OS chooses
        await web.SockSite(runner, sock, backlog=4096).start()
        bound.append(sock.getsockname()[1])
    print(orjson.dumps(bound).decode(), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes stdin
    fleet.release()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ports", type=int, default=1)
    asyncio.run(serve(parser.parse_args().ports))


if __name__ == "__main__":
    main()
