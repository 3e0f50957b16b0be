"""TLS on the listener (`listen.tls_cert`, `listen.tls_key`), with a certificate made for the test
by Debian's `openssl` (`.ci/run` installs it when missing)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import ollama
import pytest

from sollol_proxy.config import ConfigError, load_config
from tests.conftest import ClusterFactory


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the test's certificate (apt-get install openssl)"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    names = "subjectAltName=DNS:localhost,IP:127.0.0.1"
    args = ["-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
    subprocess.run(
        [openssl, "req", *args, "-addext", names, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_the_proxy_speaks_https_with_the_configured_certificate(
    cluster: ClusterFactory, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    made = await cluster(
        dict(name="a", models=["llama3.2:latest"]),
        listen__tls_cert=str(cert),
        listen__tls_key=str(key),
    )
    assert made.url.startswith("https://127.0.0.1:")
    trusted = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as http:
        async with http.get(made.url + "/api/version", ssl=trusted) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(made.url + "/api/version")  # not trusted without the certificate
        plain = made.url.replace("https://", "http://")
        with pytest.raises(aiohttp.ClientError):
            await http.get(plain + "/api/version")  # no plain HTTP on that port
    reply = await ollama.AsyncClient(host=made.url, verify=trusted).chat(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.done and reply.message.content


async def test_a_tls_handshake_that_never_comes_is_cut_at_the_header_timeout(
    cluster: ClusterFactory, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    made = await cluster(
        dict(name="a", models=[]),
        listen__tls_cert=str(cert),
        listen__tls_key=str(key),
        limits__header_timeout=0.5,
    )
    host, port = made.url.removeprefix("https://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))  # plain TCP, silent
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert loop.time() - started < 3
    writer.close()


def test_tls_files_are_checked_before_the_port_is_bound(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    base = {"nodes": ["a:1"]}
    with pytest.raises(ConfigError) as missing:
        load_config(None, env={}, overrides={**base, "listen.tls_cert": str(cert)})
    assert missing.value.key == "listen.tls_key"
    wrong = tmp_path / "wrong.pem"
    wrong.write_text("not a key\n")
    with pytest.raises(ConfigError) as unreadable:
        load_config(
            None,
            env={},
            overrides={**base, "listen.tls_cert": str(cert), "listen.tls_key": str(wrong)},
        )
    assert unreadable.value.key == "listen.tls_cert"
    assert str(wrong) in unreadable.value.problem
    loaded = load_config(
        None, env={"SOLLOL_TLS_CERT": str(cert), "SOLLOL_TLS_KEY": str(key)}, overrides=base
    )
    assert loaded.tls_cert == str(cert)
