"""Fixtures: the real gateway binary and the test kit's mock backend, on free loopback ports."""

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / os.environ.get("E2E_PROFILE", "debug")
GATEWAY_BIN = Path(os.environ.get("GATEWAY_BIN", TARGET / "inference-gateway"))
MOCK_BIN = Path(os.environ.get("MOCK_BIN", TARGET / "mock-openai"))
MODEL = "facebook/opt-125m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port}")


class Process:
    def __init__(self, args, port, what, log):
        self.port = port
        self.log = log
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_port(port, self.proc, what)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="gateway-e2e-") as d:
        yield Path(d)


def start_mock(workdir: Path, name: str, *extra: str) -> Process:
    port = free_port()
    log = open(workdir / f"{name}-mock.log", "w")
    args = [str(MOCK_BIN), "--listen", f"127.0.0.1:{port}", "--models", MODEL, *extra]
    return Process(args, port, f"mock {name}", log)


def start_gateway(
    workdir: Path,
    name: str,
    backends: list[str],
    server_extra: str = "",
    extra: str = "",
    health: str = "",
) -> Process:
    """A gateway with one pool `local-vllm`; `health` lines go into its `[pools.health]`,
    `extra` is appended (more plugins and pools)."""
    port = free_port()
    config = workdir / f"{name}.toml"
    quoted = ", ".join(f'"{b}"' for b in backends)
    config.write_text(
        f"""
[server]
listen = ["127.0.0.1:{port}"]
metrics_listen = ""
{server_extra}

[[plugins]]
kind = "access_log"
path = "{workdir / (name + '-access.log')}"

[[pools]]
name = "local-vllm"
cluster = "local"
framework = "vllm"
models = ["{MODEL}"]
backends = [{quoted}]
[pools.health]
interval = "200ms"
unhealthy_threshold = 1
{health}

{extra}
"""
    )
    log = open(workdir / f"{name}-gateway.log", "w")
    return Process([str(GATEWAY_BIN), "run", "--config", str(config)], port, f"gateway {name}", log)


@pytest.fixture(scope="session")
def mock(workdir):
    # Tokens 50 ms apart so that streaming is observably incremental.
    proc = start_mock(workdir, "main", "--token-gap-ms", "50", "--tokens", "10")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def gateway(workdir, mock):
    proc = start_gateway(workdir, "main", [f"127.0.0.1:{mock.port}"], 'upstream_idle_timeout = "1s"')
    yield proc
    proc.stop()


def make_client(port: int, path: str = "/resource_server/v1") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}{path}",
        api_key="test-globus-token",
        max_retries=0,
        timeout=30,
    )


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return make_client(gateway.port)
