"""Starts the real `parlance` binary on loopback ports with the real default model."""

import os
import pathlib
import socket
import subprocess
import tempfile
import time

import pytest
import requests
from openai import OpenAI

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("PARLANCE_BIN", ROOT / "target" / "release" / "parlance"))
MODEL = "smollm2-135m-instruct"
KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        logs = pathlib.Path(os.environ.get("PARLANCE_E2E_LOGS", tempfile.gettempdir()))
        self.log_path = logs / f"parlance-e2e-{self.port}.log"
        self.log = open(self.log_path, "w")
        if "--db" not in args:
            # Each server its own store, not a parlance.db shared through the checkout.
            args = (*args, "--db", f"sqlite://{tempfile.mkdtemp(prefix='parlance-db-')}/parlance.db")
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--port", str(self.port), *args],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"parlance exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError("parlance did not become healthy in 60 s")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server():
    # No -m: the default model is found in ./models, as the README's first command puts it.
    # --n-predict bounds the seed examples' max_tokens=16384: the 135M model rarely
    # stops on its own in Bulgarian, and the suite should not spend minutes on one answer.
    # --max-output-tokens admits the seed's 16384 (default 4096 would be a 400).
    s = Server("-np", "4", "--api-key", KEY, "--body-limit", str(1 << 20), "--n-predict", "512", "--max-output-tokens", "16384")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def tiny_server():
    """One slot and a queue of one, to see what happens past capacity; the same GGUF
    loaded twice under two names, to see several -m served side by side."""
    gguf = str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    s = Server("-m", gguf, "-m", gguf, "--alias", "tiny-a", "--alias", "tiny-b", "-np", "1", "--queue", "1", "-c", "2048")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def qwen():
    """Qwen2.5-Coder-0.5B-Instruct: a native Hermes tool template. Its tool round trips
    are greedy answers of a 0.5B model, some on a knife's edge (the Gemini follow-up
    flips between answering and calling again with the last bits of the logits), so
    this server runs --deterministic: what it answers does not depend on which tests
    ran before or alongside. The other servers run the default mode."""
    s = Server("-m", str(ROOT / "models" / "qwen2.5-coder-0.5b-instruct.gguf"), "--alias", "qwen", "-np", "4", "-c", "8192", "--n-predict", "512", "--deterministic")
    yield OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=300)
    s.stop()
