"""TLS on the client listener as the `openai` SDK sees it: a site's own CA (made here with the
`openssl` command line) trusted through the SDK's HTTP client gives working https, streaming
included; a client that does not trust that CA gets APIConnectionError."""

import ssl
import subprocess
from pathlib import Path

import openai
import pytest

from conftest import MODEL, free_port, start_gateway, wait_port

OPENSSL = "/usr/bin/openssl"

SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl(*args: str) -> None:
    done = subprocess.run([OPENSSL, *args], capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}:\n{done.stderr}"


def make_certs(d: Path) -> None:
    """`ca.pem` (a self-signed P-256 CA) and `cert.pem` / `key.pem` for localhost and
    127.0.0.1, signed by it, in `d`."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
            "-days", "2", "-subj", "/CN=gateway e2e test CA")
    openssl("req", "-new", *ec, "-keyout", str(d / "key.pem"), "-out", str(d / "server.csr"),
            "-subj", "/CN=localhost")
    (d / "server.ext").write_text(SERVER_EXT)
    openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
            "-extfile", str(d / "server.ext"), "-out", str(d / "cert.pem"))


@pytest.fixture(scope="module")
def tls(workdir, mock):
    d = workdir / "tls"
    d.mkdir(exist_ok=True)
    make_certs(d)
    port = free_port()
    server_tls = f"""
[server.tls]
listen = ["127.0.0.1:{port}"]
cert = "{d / 'cert.pem'}"
key = "{d / 'key.pem'}"
"""
    gw = start_gateway(workdir, "tls", [f"127.0.0.1:{mock.port}"], server_tls)
    wait_port(port, gw.proc, "gateway tls listener")
    yield port, d / "ca.pem"
    gw.stop()


def https_client(port: int, verify) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"https://localhost:{port}/resource_server/v1",
        api_key="x",
        max_retries=0,
        timeout=30,
        # DefaultHttpxClient is the SDK's own httpx client class (httpx or httpx2 alike);
        # an SSLContext is the `verify=` form neither deprecates.
        http_client=openai.DefaultHttpxClient(verify=verify),
    )


def test_chat_over_https_with_the_sites_ca(tls):
    port, ca = tls
    with https_client(port, ssl.create_default_context(cafile=str(ca))) as client:
        response = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "What is machine learning?"}]
        )
    assert response.choices[0].message.content.startswith("tok0 ")
    assert response.usage.completion_tokens == 10
    assert response.model == MODEL


def test_streaming_chat_over_https(tls):
    port, ca = tls
    text, usage = "", None
    with https_client(port, ssl.create_default_context(cafile=str(ca))) as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Explain quantum computing"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
    assert text == "".join(f"tok{i} " for i in range(10))
    assert usage is not None and usage.completion_tokens == 10


def test_a_client_that_does_not_trust_the_ca_gets_a_connection_error(tls):
    port, _ = tls
    with https_client(port, True) as client, pytest.raises(openai.APIConnectionError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    causes = []
    cause = err.value
    while cause is not None:
        causes.append(repr(cause))
        cause = cause.__cause__ or cause.__context__
    assert any("CERTIFICATE_VERIFY_FAILED" in c for c in causes), causes
