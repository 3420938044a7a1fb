"""Models on demand (`--models-dir`), as Ollama serves a folder: listed without loading,
loaded once by concurrent first requests, the least recently used idle model unloaded
for another (never one that is streaming), `keep_alive` per request, memory given back,
and a corrupt GGUF that answers a clear error while the others keep working."""

import concurrent.futures
import contextlib
import json
import os
import pathlib
import re
import subprocess
import tempfile
import threading
import time

import ollama
import openai
import pytest
import requests

from conftest import BIN, ROOT, Server

MODELS = ROOT / "models"
FILES = {
    "smol": MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma": MODELS / "gemma-3-270m-q4_k_m.gguf",
    "minilm": MODELS / "all-minilm-l6-v2.f16.gguf",
}


@pytest.fixture(scope="module")
def srv():
    d = tempfile.mkdtemp(prefix="parlance-models-dir-")
    for name, path in FILES.items():
        if not path.exists():
            pytest.fail(f"{path} missing: run scripts/fetch-models.sh")
        os.symlink(path, f"{d}/{name}.gguf")
    with open(f"{d}/broken.gguf", "wb") as f:
        f.write(b"GGUF" + os.urandom(4096))
    s = Server("--models-dir", d, "--max-loaded-models", "2", "-np", "2", "--db", "none")
    yield s
    s.stop()


def ps(s):
    return {m["name"]: m for m in requests.get(s.url + "/api/ps", timeout=10).json()["models"]}


def rss_mb(s):
    with open(f"/proc/{s.proc.pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def loads(s, name):
    """How many times the server has started loading the file behind `name`."""
    return sum(1 for line in open(s.log_path) if line.startswith("loading ") and f"/{name}.gguf" in line)


def wait_for(cond, secs=10):
    deadline = time.time() + secs
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def chat(s, model, **kw):
    c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=120)
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}],
                                     max_tokens=8, temperature=0, **kw)


def test_listed_without_loading(srv):
    ids = {m["id"] for m in requests.get(srv.url + "/v1/models", timeout=10).json()["data"]}
    assert ids == {"smol", "gemma", "minilm", "broken"}
    models = {m["id"]: m for m in requests.get(srv.url + "/v1/models", timeout=10).json()["data"]}
    assert models["minilm"]["type"] == "embedding" and models["minilm"]["dimensions"] == 384
    # What loading would give, read from the GGUF's metadata alone.
    assert models["smol"]["context_length"] == 8192 and models["gemma"]["context_length"] == 32768
    tags = {m["name"]: m for m in requests.get(srv.url + "/api/tags", timeout=10).json()["models"]}
    assert tags["gemma"]["size"] == FILES["gemma"].stat().st_size
    assert ps(srv) == {}
    assert all(loads(srv, n) == 0 for n in FILES)
    metrics = requests.get(srv.url + "/metrics", timeout=10).text
    assert 'parlance_model_loaded{model="gemma"} 0' in metrics


def test_concurrent_first_requests_load_it_once(srv):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: chat(srv, "smol"), range(8)))
    assert all(a.choices[0].message.content for a in answers)
    assert loads(srv, "smol") == 1
    assert set(ps(srv)) == {"smol"}
    metrics = requests.get(srv.url + "/metrics", timeout=10).text
    assert 'parlance_model_loaded{model="smol"} 1' in metrics
    assert re.search(r'parlance_model_load_seconds\{model="smol"\} 0\.\d+', metrics), metrics


def test_the_least_recently_used_idle_model_makes_room_never_a_streaming_one(srv):
    chat(srv, "smol")
    # A long stream on smol, read slowly while other models come and go.
    stream = requests.post(srv.url + "/v1/chat/completions", stream=True, timeout=300, json={
        "model": "smol", "stream": True, "max_tokens": 600, "ignore_eos": True, "temperature": 0,
        "messages": [{"role": "user", "content": "Count from one to one hundred in words."}]})
    lines = stream.iter_lines()
    first = next(l for l in lines if l)
    assert first.startswith(b"data: ")
    e = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=120)
    assert len(e.embeddings.create(model="minilm", input="x").data[0].embedding) == 384
    assert set(ps(srv)) == {"smol", "minilm"}
    # gemma needs a place: minilm is idle, smol is streaming.
    assert chat(srv, "gemma").choices[0].message.content
    assert set(ps(srv)) == {"smol", "gemma"}
    rest = [l for l in lines if l]
    assert rest[-1] == b"data: [DONE]"
    finish = [json.loads(l[6:])["choices"][0].get("finish_reason") for l in rest[:-1] if json.loads(l[6:])["choices"]]
    assert finish[-1] == "length"
    assert loads(srv, "smol") == 1, "smol was never unloaded"


def test_keep_alive_per_request_and_memory_given_back(srv):
    oc = ollama.Client(host=srv.url)
    msgs = [{"role": "user", "content": "Say hi."}]
    opts = {"num_predict": 4, "temperature": 0}
    oc.chat(model="smol", messages=msgs, options=opts)
    oc.chat(model="gemma", messages=msgs, options=opts, keep_alive="5m")
    assert set(ps(srv)) == {"smol", "gemma"}
    time.sleep(1)
    loaded = rss_mb(srv)
    # keep_alive 0: unloaded once its answer is out; its memory comes back.
    r = oc.chat(model="gemma", messages=msgs, options=opts, keep_alive=0)
    assert r.done and r.load_duration == 0, "gemma was loaded already"
    assert wait_for(lambda: "gemma" not in ps(srv))
    gemma_mb = FILES["gemma"].stat().st_size / 2**20
    assert wait_for(lambda: loaded - rss_mb(srv) > 0.8 * gemma_mb), (loaded, rss_mb(srv), gemma_mb)
    # Loaded again by the next request, which says how long that took.
    r = oc.chat(model="gemma", messages=msgs, options=opts, keep_alive="1s")
    assert r.load_duration > 0
    expires = ps(srv)["gemma"]["expires_at"]
    assert expires.startswith("20"), expires
    # Idle past its own keep_alive of one second: the sweeper unloads it.
    assert wait_for(lambda: "gemma" not in ps(srv), secs=5)
    assert "smol" in ps(srv), "smol keeps the server's --keep-alive (5m)"
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(model="smol", messages=msgs, keep_alive="soon")
    assert e.value.status_code == 400 and "keep_alive" in e.value.error


def test_a_corrupt_gguf_is_listed_and_answers_why(srv):
    # Two good models fill both places (--max-loaded-models 2).
    chat(srv, "smol")
    chat(srv, "gemma")
    assert set(ps(srv)) >= {"smol", "gemma"}
    oc = ollama.Client(host=srv.url)
    for _ in range(2):  # read again on each request, refused each time
        with pytest.raises(ollama.ResponseError) as e:
            oc.chat(model="broken", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 503 and "could not be loaded" in e.value.error, e.value.error
    with pytest.raises(openai.APIStatusError) as e:
        chat(srv, "broken")
    assert e.value.status_code == 503 and "broken" in e.value.message
    # Its metadata is checked before anything is unloaded for it: the good models
    # stay loaded, and the broken file is never handed to a full load.
    assert set(ps(srv)) >= {"smol", "gemma"} and "broken" not in ps(srv)
    assert loads(srv, "broken") == 0
    assert requests.get(srv.url + "/health", timeout=10).status_code == 200
    assert chat(srv, "smol").choices[0].message.content


def test_a_memory_budget_unloads_to_fit_and_refuses_what_never_fits():
    """Estimates: SmolLM2 ~94 MiB of weights + 180 MiB of KV cache (30 layers x 8,192
    cells x 3 KV heads x 128 x f16), Gemma 3 270M ~241 + 576 MiB (18 x 32,768 x 1 x 512):
    1,000 MiB holds either, not both; 200 MiB holds neither."""
    d = tempfile.mkdtemp(prefix="parlance-models-budget-")
    for name in ("smol", "gemma"):
        os.symlink(FILES[name], f"{d}/{name}.gguf")
    s = Server("--models-dir", d, "--max-memory", "1000MiB", "--db", "none")
    try:
        assert chat(s, "smol").choices[0].message.content
        smol = ps(s)["smol"]["size"]
        assert 250 << 20 < smol < 350 << 20, smol
        assert chat(s, "gemma").choices[0].message.content
        assert set(ps(s)) == {"gemma"}, "no count limit: the budget made smol go"
        assert 750 << 20 < ps(s)["gemma"]["size"] < 1000 << 20
    finally:
        s.stop()
    s = Server("--models-dir", d, "--max-memory", "200MiB", "--db", "none")
    try:
        with pytest.raises(openai.APIStatusError) as e:
            chat(s, "smol")
        assert e.value.status_code == 503 and "--max-memory" in e.value.message
        assert ps(s) == {}
    finally:
        s.stop()


def test_a_stream_waiting_for_a_place_gets_headers_and_keep_alives_then_its_answer():
    """One place (--max-loaded-models 1), taken by a long stream on SmolLM2: a streamed
    request for Gemma waits for it (its load cannot unload a busy model), with its
    headers at once and SSE keep-alive comments while it waits, then loads and answers."""
    d = tempfile.mkdtemp(prefix="parlance-models-wait-")
    for name in ("smol", "gemma"):
        os.symlink(FILES[name], f"{d}/{name}.gguf")
    s = Server("--models-dir", d, "--max-loaded-models", "1", "--db", "none")
    try:
        busy = requests.post(s.url + "/v1/chat/completions", stream=True, timeout=300, json={
            "model": "smol", "stream": True, "max_tokens": 900, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count to a thousand."}]})
        busy_lines = busy.iter_lines()
        assert next(l for l in busy_lines if l).startswith(b"data: ")
        t0 = time.time()
        waiting = requests.post(s.url + "/v1/chat/completions", stream=True, timeout=300, json={
            "model": "gemma", "stream": True, "max_tokens": 4,
            "messages": [{"role": "user", "content": "Say hi."}]})
        assert waiting.status_code == 200 and time.time() - t0 < 3, "headers come at once"
        # Reading smol's stream to its end frees the place; gemma's lines come after.
        threading.Thread(target=lambda: [None for _ in busy_lines], daemon=True).start()
        lines = [l for l in waiting.iter_lines() if l]
        keep_alives = [l for l in lines if l.startswith(b":")]
        data = [l for l in lines if l.startswith(b"data: ")]
        assert keep_alives, f"no keep-alive while waiting {time.time() - t0:.1f} s"
        assert data[-1] == b"data: [DONE]"
        assert set(ps(s)) == {"gemma"}
    finally:
        s.stop()


def test_the_config_files_local_section_sets_the_folder_and_its_rules():
    """`[local]` in parlance.toml: a folder relative to the file, a keep_alive that keeps
    models (-1), a count limit; the flags are left out."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="parlance-models-cfg-"))
    (d / "models").mkdir()
    os.symlink(FILES["smol"], d / "models" / "smol.gguf")
    (d / "parlance.toml").write_text('[local]\nmodels_dir = "models"\nkeep_alive = "-1"\nmax_loaded_models = 1\nmax_memory = "4GiB"\n')
    s = Server("--config", str(d / "parlance.toml"), "--db", "none")
    try:
        assert [m["id"] for m in requests.get(s.url + "/v1/models", timeout=10).json()["data"]] == ["smol"]
        assert chat(s, "smol").choices[0].message.content
        # Kept: Ollama's far-future expiry.
        assert ps(s)["smol"]["expires_at"].startswith("21")
    finally:
        s.stop()
    (d / "bad.toml").write_text('[local]\nmodels_dir = "models"\nmax_memory = "lots"\n')
    out = subprocess.run([str(BIN), "serve", "--config", str(d / "bad.toml"), "--port", "0", "--db", "none"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "max_memory" in out.stderr, out.stderr


def test_a_catalog_model_with_keep_alive_loads_on_demand_and_unloads_when_idle():
    """`keep_alive` on a catalog model with a local deployment: listed at start without
    loading, loaded by its first request, unloaded after that long idle; a catalog model
    without it stays loaded from the start."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="parlance-models-catalog-"))
    (d / "parlance.toml").write_text(f"""
[[models]]
name = "smol-lazy"
keep_alive = "2s"
deployments = [{{ gguf = "{FILES['smol']}" }}]

[[models]]
name = "smol-eager"
deployments = [{{ gguf = "{FILES['smol']}" }}]
""")
    s = Server("--config", str(d / "parlance.toml"), "--db", "none")
    starts = lambda: sum(1 for line in open(s.log_path) if line.startswith("loading ") and FILES["smol"].name in line)
    try:
        assert set(ps(s)) == {"smol-eager"} and starts() == 1
        assert requests.get(s.url + "/v1/models/smol-lazy", timeout=10).json()["context_length"] == 8192
        assert chat(s, "smol-lazy").choices[0].message.content
        assert set(ps(s)) == {"smol-eager", "smol-lazy"} and starts() == 2
        assert ps(s)["smol-lazy"]["expires_at"].startswith("20")
        assert wait_for(lambda: "smol-lazy" not in ps(s), secs=8)
        assert "smol-eager" in ps(s)
        assert chat(s, "smol-lazy").choices[0].message.content and starts() == 3
    finally:
        s.stop()


def test_a_stream_waiting_for_a_load_gets_keep_alives():
    """With one place, busy with a long answer, a streamed request for another model
    waits for room: its SSE headers come at once and keep-alive comments every 5 s,
    then the answer (or, past the 30 s wait, the error event saying why)."""
    d = tempfile.mkdtemp(prefix="parlance-models-wait-")
    for name in ("smol", "gemma"):
        os.symlink(FILES[name], f"{d}/{name}.gguf")
    s = Server("--models-dir", d, "--max-loaded-models", "1", "-np", "1", "--db", "none")
    try:
        chat(s, "smol")
        def busy():
            # Load only: the server stops under it when the test ends.
            with contextlib.suppress(requests.ConnectionError):
                requests.post(s.url + "/v1/chat/completions", timeout=300, json={
                    "model": "smol", "messages": [{"role": "user", "content": "Count to a thousand."}],
                    "max_tokens": 3000, "ignore_eos": True})
        long = threading.Thread(target=busy, daemon=True)
        long.start()
        time.sleep(1)
        started = time.time()
        r = requests.post(s.url + "/v1/chat/completions", stream=True, timeout=120, json={
            "model": "gemma", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "stream": True})
        assert r.status_code == 200 and time.time() - started < 3, "headers before the load"
        comments = 0
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith(":"):
                comments += 1
            # The first chunk with text (the role-only chunk goes out with the headers).
            if line.startswith("data:"):
                chunk = json.loads(line[5:])
                if "error" in chunk:
                    assert "leave no room" in chunk["error"]["message"], chunk
                    break
                if chunk["choices"][0]["delta"].get("content"):
                    break
        waited = time.time() - started
        assert waited > 5 and comments >= int(waited // 5) - 1 >= 0 and comments >= 1, (waited, comments, line)
    finally:
        s.stop()


def test_num_ctx_loads_an_idle_model_again_with_that_context():
    """Ollama's options.num_ctx: the model is loaded with that context (again, once
    idle, when another size is asked for); a prompt beyond it is refused."""
    d = tempfile.mkdtemp(prefix="parlance-models-ctx-")
    os.symlink(FILES["smol"], f"{d}/smol.gguf")
    s = Server("--models-dir", d, "-np", "1", "--db", "none")
    try:
        oc = ollama.Client(host=s.url)
        ask = lambda **o: oc.chat(model="smol", messages=[{"role": "user", "content": "Say hi."}], options={"num_predict": 4, **o})
        ask(num_ctx=1024)
        assert ps(s)["smol"]["context_length"] == 1024
        ask(num_ctx=1024)
        ask()
        assert loads(s, "smol") == 1, "the same size, or none asked, keeps it"
        ask(num_ctx=2048)
        assert ps(s)["smol"]["context_length"] == 2048 and loads(s, "smol") == 2
        with pytest.raises(ollama.ResponseError) as e:
            oc.chat(model="smol", messages=[{"role": "user", "content": "word " * 3000}], options={"num_ctx": 2048})
        assert e.value.status_code == 400, e.value.error
        with pytest.raises(ollama.ResponseError) as e:
            ask(num_ctx=-5)
        assert e.value.status_code == 400 and "num_ctx" in e.value.error
    finally:
        s.stop()
