"""Images through the gateway: a Gemini upstream (inline bytes only) gets http(s)
images fetched by Parlance as `inlineData`; an Anthropic upstream gets the URL as it
came; URLs that point at private, loopback or metadata addresses (directly or by a
redirect) are refused with a 400 naming the part, never fetched, never a hang."""

import base64
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from conftest import Server
from mock_upstreams import ANSWER, Mock

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


class Images:
    """A loopback picture server: /red.png, and /to-private redirecting off-limits."""

    def __init__(self):
        owner = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                owner.hits.append(self.path)
                if self.path == "/red.png":
                    self.send_response(200)
                    self.send_header("content-type", "image/png")
                    self.send_header("content-length", str(len(PNG)))
                    self.end_headers()
                    self.wfile.write(PNG)
                elif self.path == "/to-private":
                    self.send_response(302)
                    self.send_header("location", f"http://127.0.0.2:{owner.port}/red.png")
                    self.send_header("content-length", "0")
                    self.end_headers()
                else:
                    self.send_error(404)

        self.hits = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def gw():
    mock, pics = Mock(), Images()
    d = tempfile.mkdtemp(prefix="parlance-images-")
    cfg = f"{d}/gw.toml"
    with open(cfg, "w") as f:
        f.write(f"""
[images]
allow_private = ["127.0.0.1"]     # the test's picture server; everything else private stays refused

[providers.claude]
kind = "anthropic"
base_url = "{mock.url}/v1"
api_key = "sk-ant-mock"

[providers.gem]
kind = "gemini"
base_url = "{mock.url}/v1beta"
api_key = "gem-mock-key"

[[models]]
name = "via-gemini"
vision = true
deployments = [{{ provider = "gem", model = "gemini-mock" }}]

[[models]]
name = "via-claude"
vision = true
deployments = [{{ provider = "claude", model = "claude-mock" }}]
""")
    s = Server("--config", cfg, "--db", "none")
    yield s, mock, pics
    s.stop()
    mock.stop()
    pics.httpd.shutdown()


def ask(s, model, url):
    c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=60)
    return c.chat.completions.create(model=model, max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What colour is this?"}, {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}])


def last_body(mock, fragment):
    return [r for r in mock.requests if fragment in r["path"]][-1]["body"]


def test_gemini_gets_fetched_bytes_inline_anthropic_gets_the_url(gw):
    s, mock, pics = gw
    url = f"http://127.0.0.1:{pics.port}/red.png"
    assert ask(s, "via-gemini", url).choices[0].message.content == ANSWER
    parts = last_body(mock, "gemini-mock")["contents"][0]["parts"]
    inline = next(p for p in parts if "inlineData" in p or "inline_data" in p)
    blob = inline.get("inlineData") or inline["inline_data"]
    assert (blob.get("mimeType") or blob.get("mime_type")) == "image/png"
    assert base64.b64decode(blob["data"]) == PNG
    assert not any("fileData" in p or "file_data" in p for p in parts)
    assert ask(s, "via-claude", url).choices[0].message.content == ANSWER
    blocks = last_body(mock, "/messages")["messages"][0]["content"]
    img = next(b for b in blocks if b["type"] == "image")
    assert img["source"] == {"type": "url", "url": url}
    # A data URL goes to Gemini as the same bytes, fetched from nowhere.
    hits = len(pics.hits)
    ask(s, "via-gemini", "data:image/png;base64," + base64.b64encode(PNG).decode())
    parts = last_body(mock, "gemini-mock")["contents"][0]["parts"]
    assert any(base64.b64decode((p.get("inlineData") or p.get("inline_data") or {}).get("data", "")) == PNG for p in parts)
    assert len(pics.hits) == hits


@pytest.mark.parametrize("target,why", [
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://127.0.0.2:{port}/red.png", "loopback"),
    ("http://[::1]:{port}/red.png", "loopback"),
    ("http://10.0.0.7/cat.png", "private"),
    ("http://127.0.0.1:{port}/to-private", "127.0.0.2"),
    ("http://127.0.0.1:{port}/missing.png", "404"),
])
def test_unsafe_or_broken_image_urls_are_a_400_naming_the_part(gw, target, why):
    s, mock, pics = gw
    before = len(mock.requests)
    started = time.time()
    with pytest.raises(openai.BadRequestError) as e:
        ask(s, "via-gemini", target.format(port=pics.port))
    err = e.value.body
    assert err["param"] == "messages[0].content[1]" and err["code"] == "invalid_image_url", err
    assert why in err["message"], err
    assert time.time() - started < 10
    assert len(mock.requests) == before, "nothing reached the upstream"
