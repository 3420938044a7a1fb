"""Ollama's `/api/pull` and `/api/delete` on `--models-dir`, against a fake registry
speaking Ollama's (OCI distribution) API on a loopback port: streamed progress through
the official `ollama` client, an interrupted download resumed with a Range request, a
wrong sha256 refused with the partial file removed, the pulled model served on demand,
then deleted; pulling needs the admin key once the server has keys."""

import hashlib
import http.server
import json
import os
import pathlib
import tempfile
import threading

import ollama
import pytest
import requests

from conftest import ROOT, Server

BLOB = (ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes()
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class Hub(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.cut_next = False  # the next blob download stops after 1 MiB
        self.ranges = []  # the Range header of each blob request
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = self.path.split("/")  # '', 'v2', ns, repo, kind, ref
        if len(parts) != 6 or parts[2] != "library" or parts[3] not in ("tiny", "bad"):
            return self.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
        if parts[4] == "manifests":
            digest = DIGEST if parts[3] == "tiny" else "sha256:" + "0" * 64
            manifest = {"schemaVersion": 2, "layers": [
                {"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": len(BLOB)},
                {"mediaType": "application/vnd.ollama.image.license", "digest": "sha256:" + "1" * 64, "size": 3}]}
            return self.send(200, json.dumps(manifest).encode(), [("Content-Type", "application/json")])
        self.send_blob()

    def send_blob(self):
        """The model file from the Range asked for; after `cut_next`, only its first MiB
        and a closed connection."""
        hub = self.server
        rng = self.headers.get("Range")
        hub.ranges.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        status = 206 if rng else 200
        self.send_response(status)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        self.send_header("Content-Length", str(len(BLOB) - start))
        self.end_headers()
        if hub.cut_next:
            hub.cut_next = False
            self.wfile.write(BLOB[start:start + (1 << 20)])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(BLOB[start:])


@pytest.fixture(scope="module")
def hub():
    h = Hub()
    yield h
    h.shutdown()


@pytest.fixture(scope="module")
def srv(hub):
    d = tempfile.mkdtemp(prefix="parlance-pull-")
    s = Server("--models-dir", d, "--registry", hub.url, "--db", "none")
    s.dir = pathlib.Path(d)
    yield s
    s.stop()


def test_pull_resumes_checks_serves_and_deletes(srv, hub):
    oc = ollama.Client(host=srv.url)
    assert requests.get(srv.url + "/api/tags", timeout=10).json()["models"] == []
    hub.cut_next = True
    seen = []
    with pytest.raises(ollama.ResponseError) as e:
        for p in oc.pull("tiny", stream=True):
            seen.append(p)
    assert "broke off" in e.value.error
    assert seen[0].status == "pulling manifest"
    partial = srv.dir / "tiny.gguf.partial"
    have = partial.stat().st_size
    assert 0 < have < len(BLOB)
    assert not (srv.dir / "tiny.gguf").exists()

    progress = list(oc.pull("tiny", stream=True))
    assert hub.ranges[-1] == f"bytes={have}-", hub.ranges
    counted = [p for p in progress if p.completed is not None]
    assert counted[0].completed == have and counted[-1].completed == counted[-1].total == len(BLOB)
    assert counted[0].digest == DIGEST
    assert [p.status for p in progress[-3:]] == ["verifying sha256 digest", "writing manifest", "success"]
    assert hashlib.sha256((srv.dir / "tiny.gguf").read_bytes()).hexdigest() == DIGEST[7:]
    assert not partial.exists()

    tags = {m["name"]: m for m in requests.get(srv.url + "/api/tags", timeout=10).json()["models"]}
    assert tags["tiny"]["size"] == len(BLOB)
    r = oc.chat(model="tiny:latest", messages=[{"role": "user", "content": "Say hi."}], options={"num_predict": 4})
    assert r.done and r.load_duration > 0
    # stream: false answers once.
    assert oc.pull("tiny").status == "success"

    assert oc.delete("tiny").status == "success"
    assert requests.get(srv.url + "/api/tags", timeout=10).json()["models"] == []
    assert not (srv.dir / "tiny.gguf").exists()
    with pytest.raises(ollama.ResponseError) as e:
        oc.delete("tiny")
    assert e.value.status_code == 404


def test_a_wrong_digest_is_refused_and_nothing_is_left(srv):
    oc = ollama.Client(host=srv.url)
    with pytest.raises(ollama.ResponseError) as e:
        list(oc.pull("bad", stream=True))
    assert "digest mismatch" in e.value.error
    assert sorted(os.listdir(srv.dir)) == []
    with pytest.raises(ollama.ResponseError) as e:
        oc.pull("nothere")
    assert e.value.status_code == 404 and "does not exist" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        oc.pull("../../etc")
    assert e.value.status_code == 400


def test_pull_needs_the_admin_key_when_the_server_has_keys(hub):
    d = tempfile.mkdtemp(prefix="parlance-pull-keys-")
    s = Server("--models-dir", d, "--registry", hub.url, "--api-key", "user-key", "--db", "none")
    try:
        user = ollama.Client(host=s.url, headers={"Authorization": "Bearer user-key"})
        with pytest.raises(ollama.ResponseError) as e:
            user.pull("tiny")
        assert e.value.status_code == 403
        with pytest.raises(ollama.ResponseError) as e:
            user.delete("tiny")
        assert e.value.status_code == 403
        assert os.listdir(d) == []
    finally:
        s.stop()


class HfHub(http.server.ThreadingHTTPServer):
    """The Hugging Face hub's URL layout (HF_ENDPOINT): a listing with each file's
    size and sha256 (`?blobs=true`), files under `resolve/main` with Range."""

    daemon_threads = True

    def __init__(self, sha256):
        super().__init__(("127.0.0.1", 0), HfHandler)
        self.sha256 = sha256
        self.cut_next = False
        self.ranges = []
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class HfHandler(Handler):
    def do_GET(self):
        hub = self.server
        if self.path == "/api/models/acme/smol-GGUF?blobs=true":
            body = json.dumps({"siblings": [
                {"rfilename": "README.md", "size": 10},
                {"rfilename": "smol-Q4_1.gguf", "size": len(BLOB), "lfs": {"sha256": hub.sha256, "size": len(BLOB)}},
            ]}).encode()
            return self.send(200, body)
        if self.path != "/acme/smol-GGUF/resolve/main/smol-Q4_1.gguf":
            return self.send(404, b"")
        self.send_blob()


def test_parlance_pull_resumes_checks_and_rm_deletes(tmp_path):
    import subprocess
    from conftest import BIN
    hub = HfHub(hashlib.sha256(BLOB).hexdigest())
    env = {**os.environ, "HF_ENDPOINT": hub.url}
    run = lambda *a: subprocess.run([str(BIN), *a, "--models-dir", str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    try:
        hub.cut_next = True
        first = run("pull", "acme/smol-GGUF:Q4_1")
        assert first.returncode != 0 and "run it again to resume" in first.stderr, first.stderr
        partial = tmp_path / "smol-Q4_1.gguf.partial"
        assert partial.stat().st_size == 1 << 20
        again = run("pull", "acme/smol-GGUF:Q4_1")
        assert again.returncode == 0, again.stderr
        assert hub.ranges[-1] == f"bytes={1 << 20}-" and "resuming after" in again.stderr
        assert (tmp_path / "smol-Q4_1.gguf").read_bytes() == BLOB and not partial.exists()
        # Served from the folder under its file's name.
        s = Server("--models-dir", str(tmp_path), "--db", "none")
        try:
            r = requests.post(s.url + "/v1/chat/completions", json={"model": "smol-Q4_1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=120)
            assert r.status_code == 200, r.text
        finally:
            s.stop()
        gone = run("rm", "smol-Q4_1")
        assert gone.returncode == 0 and "deleted" in gone.stdout and not (tmp_path / "smol-Q4_1.gguf").exists()
        assert run("rm", "smol-Q4_1").returncode != 0
        # A file whose sha256 is not the hub's is refused and removed.
        hub.sha256 = "0" * 64
        bad = run("pull", "acme/smol-GGUF:Q4_1")
        assert bad.returncode != 0 and "is not the hub's" in bad.stderr and "removed" in bad.stderr, bad.stderr
        assert list(tmp_path.iterdir()) == []
    finally:
        hub.shutdown()
