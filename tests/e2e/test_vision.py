"""Images on local models through llama.cpp's mtmd. No vision model can be downloaded
here, so scripts/make-test-mmproj.py writes a random-weight projector (Gemma 3 layout)
for SmolLM2: its answers describe nothing, but they depend on the image. With
PARLANCE_VLM=model.gguf PARLANCE_MMPROJ=mmproj.gguf set, a real vision model is also
asked what colour a red square is."""

import base64
import concurrent.futures as cf
import io
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import anthropic
import openai
import pytest
import requests

from conftest import BIN, ROOT, Server
from test_images import Images

LM = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
IMAGE_TOKENS = 16  # the test projector: 64 px / 8 px patches / 2x2 pooling = 4 x 4


def png(rgb, side=32, stripe=None):
    """A square PNG of one colour (optionally with a stripe of another)."""
    rows = []
    for y in range(side):
        colour = stripe if stripe and y < side // 4 else rgb
        rows.append(b"\x00" + bytes(colour) * side)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")


def data_url(image: bytes, kind="png"):
    return f"data:image/{kind};base64," + base64.b64encode(image).decode()


RED, BLUE = png((230, 20, 20)), png((20, 20, 230))


def image_message(url, text="What colour is this?"):
    return {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}


def ask(c, model, url, **kw):
    return c.chat.completions.create(model=model, messages=[image_message(url)], temperature=0, max_tokens=kw.pop("max_tokens", 16), **kw)


@pytest.fixture(scope="module")
def mmproj():
    d = tempfile.mkdtemp(prefix="parlance-vision-")
    out = f"{d}/mmproj-test.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-test-mmproj.py"), str(LM), out], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def vis(mmproj):
    """A catalog server: `smol-vision` (SmolLM2 + the projector) and `smol-text`
    (SmolLM2 alone), images fetched from the test's loopback picture server."""
    pics = Images()
    d = tempfile.mkdtemp(prefix="parlance-vision-")
    cfg = f"{d}/vision.toml"
    with open(cfg, "w") as f:
        f.write(f"""
[images]
allow_private = ["127.0.0.1"]

[[models]]
name = "smol-vision"
deployments = [{{ gguf = "{LM}", mmproj = "{mmproj}" }}]

[[models]]
name = "smol-text"
deployments = [{{ gguf = "{LM}" }}]
""")
    s = Server("--config", cfg, "--db", "none", "-np", "4", "-t", "2")
    yield s, pics
    s.stop()
    pics.httpd.shutdown()


@pytest.fixture(scope="module")
def c(vis):
    return openai.OpenAI(base_url=vis[0].url + "/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def first_red(c):
    """The red square asked first on a fresh engine: nothing cached, alone."""
    return ask(c, "smol-vision", data_url(RED))


def tokens(s, text, model="smol-vision"):
    r = requests.post(s.url + "/tokenize", json={"content": text, "add_special": False, "model": model}, timeout=10)
    r.raise_for_status()
    return len(r.json()["tokens"])


def test_models_say_which_take_images_and_a_text_model_refuses_them(vis, c):
    models = {m.id: m for m in c.models.list().data}
    assert models["smol-vision"].model_extra["capabilities"]["vision"] is True
    assert models["smol-text"].model_extra["capabilities"]["vision"] is False
    with pytest.raises(openai.BadRequestError) as e:
        ask(c, "smol-text", data_url(RED))
    assert e.value.body["param"] == "messages[0].content", e.value.body
    assert "does not accept images" in e.value.body["message"]


def test_an_image_takes_its_tokens_in_the_prompt_and_steers_the_answer(vis, c, first_red):
    s, _ = vis
    red = first_red
    red_again = ask(c, "smol-vision", data_url(RED))
    text_only = c.chat.completions.create(model="smol-vision", messages=[{"role": "user", "content": "What colour is this?"}], temperature=0, max_tokens=4)
    # Gemma 3's projector wraps the embeddings in <start_of_image> ... <end_of_image>
    # text, which SmolLM2 tokenizes as plain text.
    wrap = tokens(s, "<start_of_image>") + tokens(s, "<end_of_image>")
    assert red.usage.prompt_tokens == text_only.usage.prompt_tokens + IMAGE_TOKENS + wrap
    blue = ask(c, "smol-vision", data_url(BLUE))
    assert red.choices[0].message.content != blue.choices[0].message.content
    # A different picture shares only the text before it.
    assert blue.usage.prompt_tokens_details.cached_tokens < red.usage.prompt_tokens - IMAGE_TOKENS
    # The same picture again is a prefix-cache hit: its cells are known by its bytes.
    # The whole prompt is reused, its first token sampled from the logits its first
    # prefill kept, so the greedy text is the same.
    assert red_again.usage.prompt_tokens_details.cached_tokens == red.usage.prompt_tokens
    assert red_again.choices[0].message.content == red.choices[0].message.content


def test_a_follow_up_turn_about_the_same_image_prefills_only_what_is_new(c):
    stripe = data_url(png((20, 200, 20), stripe=(250, 250, 250)))
    first = ask(c, "smol-vision", stripe, max_tokens=12)
    follow = c.chat.completions.create(
        model="smol-vision", temperature=0, max_tokens=8,
        messages=[image_message(stripe), {"role": "assistant", "content": first.choices[0].message.content},
                  {"role": "user", "content": "Are you sure?"}])
    assert follow.usage.prompt_tokens > first.usage.prompt_tokens
    assert follow.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens


def test_jpeg_webp_and_gif_are_decoded(c):
    pytest.importorskip("PIL")
    from PIL import Image

    answers = {}
    for kind, fmt in [("jpeg", "JPEG"), ("webp", "WEBP"), ("gif", "GIF")]:
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, fmt)
        r = ask(c, "smol-vision", data_url(buf.getvalue(), kind))
        assert r.choices[0].finish_reason in ("stop", "length")
        answers[kind] = r.usage.prompt_tokens
    assert len(set(answers.values())) == 1, answers


def test_http_images_are_fetched_under_the_ssrf_rules(vis, c):
    s, pics = vis
    from test_images import PNG

    by_data = ask(c, "smol-vision", data_url(PNG))
    by_url = ask(c, "smol-vision", f"http://127.0.0.1:{pics.port}/red.png")
    assert "/red.png" in pics.hits
    # The fetched bytes are the data URL's: the same cells, from the cache.
    assert by_url.usage.prompt_tokens_details.cached_tokens == by_data.usage.prompt_tokens
    for url, why in [(f"http://127.0.0.2:{pics.port}/red.png", "loopback"), ("http://169.254.169.254/latest/meta-data/", "link-local"),
                     (f"http://127.0.0.1:{pics.port}/to-private", "127.0.0.2")]:
        with pytest.raises(openai.BadRequestError) as e:
            ask(c, "smol-vision", url)
        assert e.value.body["param"] == "messages[0].content[1]" and e.value.body["code"] == "invalid_image_url", e.value.body
        assert why in e.value.body["message"], e.value.body


def huge_png():
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)


@pytest.mark.parametrize("url,code,why", [
    (data_url(b"hello, not a picture"), "invalid_image", "JPEG, PNG, WebP or GIF"),
    ("data:image/png;base64,%%%notbase64", "invalid_image", "base64"),
    (data_url(huge_png()), "invalid_image", "larger than"),
    (data_url(RED[:60]), "invalid_image", "could not be decoded"),
])
def test_bad_images_are_a_400_naming_the_part(c, url, code, why):
    with pytest.raises(openai.BadRequestError) as e:
        ask(c, "smol-vision", url)
    body = e.value.body
    assert body["param"] == "messages[0].content[1]" and body["code"] == code, body
    assert why in body["message"], body


def test_the_image_marker_in_text_is_refused(c):
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="smol-vision", max_tokens=4, messages=[image_message(data_url(RED), "Is <__media__> a colour?")])
    assert "<__media__>" in e.value.body["message"], e.value.body


def test_images_stream_and_run_beside_text_requests_without_holding_slots(vis, c):
    s, _ = vis
    colours = [(i * 30 % 256, 255 - i * 25, i * 60 % 256) for i in range(8)]

    def image_stream(rgb):
        stream = c.chat.completions.create(model="smol-vision", messages=[image_message(data_url(png(rgb)))], max_tokens=24, stream=True,
                                           stream_options={"include_usage": True})
        finish, text, usage = None, "", None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        return finish, text, usage

    def text_request(i):
        r = c.chat.completions.create(model="smol-vision", messages=[{"role": "user", "content": f"Count to {i + 3}."}], max_tokens=24)
        return r.choices[0].finish_reason, r.choices[0].message.content, r.usage

    with cf.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(image_stream, rgb) for rgb in colours] + [pool.submit(text_request, i) for i in range(4)]
        results = [f.result(timeout=300) for f in futures]
    for finish, text, usage in results:
        assert finish in ("stop", "length") and text and usage.completion_tokens > 0
    image_prompts = {r[2].prompt_tokens for r in results[:8]}
    assert len(image_prompts) == 1, image_prompts
    metrics = requests.get(s.url + "/metrics", timeout=5).text
    busy = [line for line in metrics.splitlines() if line.startswith("parlance_busy_slots") and "smol-vision" in line]
    assert busy and all(line.endswith(" 0") for line in busy), busy


def test_the_anthropic_door_takes_base64_images_for_a_local_model(vis):
    s, _ = vis
    a = anthropic.Anthropic(base_url=s.url, api_key="none", max_retries=0)
    msg = a.messages.create(model="smol-vision", max_tokens=8, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(RED).decode()}},
        {"type": "text", "text": "What colour is this?"}]}])
    assert msg.content[0].text and msg.usage.input_tokens > IMAGE_TOKENS
    with pytest.raises(anthropic.BadRequestError) as e:
        a.messages.create(model="smol-vision", max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(b"nope").decode()}},
            {"type": "text", "text": "What colour is this?"}]}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    assert "JPEG, PNG" in e.value.body["error"]["message"]


def test_the_gemini_and_responses_doors_take_images_for_a_local_model(vis, first_red):
    s, _ = vis
    b64 = base64.b64encode(RED).decode()
    g = requests.post(s.url + "/v1beta/models/smol-vision:generateContent", timeout=60, json={
        "contents": [{"role": "user", "parts": [{"text": "What colour is this?"}, {"inline_data": {"mime_type": "image/png", "data": b64}}]}],
        "generationConfig": {"maxOutputTokens": 4}})
    assert g.status_code == 200, g.text
    assert g.json()["usageMetadata"]["promptTokenCount"] == first_red.usage.prompt_tokens
    r = requests.post(s.url + "/v1/responses", timeout=60, json={"model": "smol-vision", "max_output_tokens": 4, "store": False, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "What colour is this?"}, {"type": "input_image", "image_url": data_url(RED)}]}]})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["input_tokens"] == first_red.usage.prompt_tokens
    bad = requests.post(s.url + "/v1beta/models/smol-vision:generateContent", timeout=60, json={
        "contents": [{"role": "user", "parts": [{"text": "Hi"}, {"inline_data": {"mime_type": "image/png", "data": base64.b64encode(b"nope").decode()}}]}]})
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT", bad.text


def test_an_image_wider_than_the_micro_batch_is_a_400_not_a_crash(tmp_path):
    """Gemma 3's image embeddings attend to each other both ways, so they must fit one
    llama.cpp micro-batch (llama.cpp aborts the process otherwise): --deterministic's
    is 63 and this projector's images take 64."""
    proj = tmp_path / "mmproj-64.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-test-mmproj.py"), str(LM), str(proj), "--image-size", "128"], check=True, capture_output=True)
    s = Server("-m", str(LM), "--mmproj", str(proj), "-a", "wide", "--deterministic", "--db", "none", "-np", "2", "-t", "2")
    try:
        cc = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=120)
        with pytest.raises(openai.BadRequestError) as e:
            ask(cc, "wide", data_url(RED))
        body = e.value.body
        assert body["param"] == "messages[0].content[1]" and "64 positions" in body["message"] and "63" in body["message"], body
        assert requests.get(s.url + "/health", timeout=5).status_code == 200
        assert cc.chat.completions.create(model="wide", max_tokens=2, messages=[{"role": "user", "content": "Hi"}]).choices
    finally:
        s.stop()


def test_mmproj_on_the_command_line(mmproj, first_red):
    cli = Server("-m", str(LM), "--mmproj", mmproj, "-a", "cli-vision", "--db", "none", "-np", "2", "-t", "2")
    try:
        cc = openai.OpenAI(base_url=cli.url + "/v1", api_key="none", max_retries=0, timeout=120)
        assert cc.models.list().data[0].model_extra["capabilities"]["vision"] is True
        # Same weights, same image, both first on a fresh engine: the same answer.
        got = ask(cc, "cli-vision", data_url(RED))
        assert got.usage.prompt_tokens == first_red.usage.prompt_tokens
        assert got.choices[0].message.content == first_red.choices[0].message.content
    finally:
        cli.stop()


@pytest.mark.parametrize("args,message", [
    (["--mmproj", "/nonexistent/mmproj.gguf"], "does not exist"),
    (["--mmproj", str(LM)], "cannot load the projector"),
    (["--mmproj", "a.gguf,b.gguf"], "2 --mmproj given for 1 -m"),
])
def test_bad_projectors_stop_the_server_with_a_reason(args, message):
    p = subprocess.run([str(BIN), "serve", "-m", str(LM), "--port", "0", "--db", "none", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert message in p.stdout + p.stderr, p.stdout + p.stderr


def test_gemma3_with_a_projector_wraps_each_image_in_its_own_tokens(tmp_path):
    """BgGPT's family: Gemma 3's <start_of_image>/<end_of_image> are single tokens of
    its vocabulary, placed around the embeddings by mtmd, and its template's turns."""
    gemma = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not gemma.exists():
        raise RuntimeError("scripts/fetch-models.sh gemma3 puts the model in models/")
    proj = tmp_path / "mmproj-gemma.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-test-mmproj.py"), str(gemma), str(proj)], check=True, capture_output=True)
    s = Server("-m", str(gemma), "--mmproj", str(proj), "-a", "gemma-vision", "--db", "none", "-np", "2", "-c", "4096", "-t", "2")
    try:
        cc = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=120)
        r = ask(cc, "gemma-vision", data_url(RED), max_tokens=6)
        assert r.choices[0].finish_reason in ("stop", "length")
        text_only = cc.chat.completions.create(model="gemma-vision", max_tokens=1, messages=[
            {"role": "user", "content": "What colour is this?"}])
        assert tokens(s, "<start_of_image>", "gemma-vision") == 1
        assert r.usage.prompt_tokens == text_only.usage.prompt_tokens + IMAGE_TOKENS + 2
    finally:
        s.stop()


@pytest.mark.skipif(not (os.environ.get("PARLANCE_VLM") and os.environ.get("PARLANCE_MMPROJ")),
                    reason="set PARLANCE_VLM=model.gguf PARLANCE_MMPROJ=mmproj.gguf to run on a real vision model")
def test_a_real_vision_model_sees_a_red_square():
    s = Server("-m", os.environ["PARLANCE_VLM"], "--mmproj", os.environ["PARLANCE_MMPROJ"], "-a", "vlm", "--db", "none", "-np", "2")
    try:
        cc = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=600)
        r = cc.chat.completions.create(model="vlm", temperature=0, max_tokens=24, messages=[
            image_message(data_url(png((230, 20, 20), side=256)), "What colour is this square? Answer in one word.")])
        assert "red" in r.choices[0].message.content.lower(), r.choices[0].message.content
    finally:
        s.stop()


BAD_B64 = "@@not base64@@"


def test_image_errors_name_the_part_in_each_doors_own_terms(vis):
    # Anthropic and Gemini lost the part (OpenAI says messages[0].content[1]); Responses
    # named input[1].content[1] for input[0] when instructions were set.
    s, _ = vis
    a = requests.post(s.url + "/v1/messages", timeout=60, json={"model": "smol-vision", "max_tokens": 4, "system": "Be brief.", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": BAD_B64}}]}]})
    assert a.status_code == 400 and a.json()["error"]["message"].startswith("messages.0.content.1: "), a.text
    g = requests.post(s.url + "/v1beta/models/smol-vision:generateContent", timeout=60, json={
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Hi"}, {"inline_data": {"mime_type": "image/png", "data": BAD_B64}}]}]})
    assert g.status_code == 400 and g.json()["error"]["message"].startswith("contents[0].parts[1]: "), g.text
    r = requests.post(s.url + "/v1/responses", timeout=60, json={"model": "smol-vision", "instructions": "Be brief.", "store": False, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}, {"type": "input_image", "image_url": "data:image/png;base64," + BAD_B64}]}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].content[1]", r.text
    o = requests.post(s.url + "/v1/chat/completions", timeout=60, json={"model": "smol-vision", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64," + BAD_B64}}]}]})
    assert o.status_code == 400 and o.json()["error"]["param"] == "messages[1].content[1]", o.text


def test_gemini_takes_url_safe_base64_as_its_sdk_sends_it(vis, first_red):
    s, _ = vis
    # A picture whose standard base64 has '+' or '/', so the URL-safe one differs.
    pic = next(p for p in (png((r, 40, 200)) for r in range(256)) if set("+/") & set(base64.b64encode(p).decode()))
    safe = base64.urlsafe_b64encode(pic).decode().rstrip("=")
    assert "-" in safe or "_" in safe
    g = requests.post(s.url + "/v1beta/models/smol-vision:generateContent", timeout=60, json={
        "contents": [{"role": "user", "parts": [{"text": "What colour is this?"}, {"inline_data": {"mime_type": "image/png", "data": safe}}]}],
        "generationConfig": {"maxOutputTokens": 2}})
    assert g.status_code == 200, g.text
    assert g.json()["usageMetadata"]["promptTokenCount"] == first_red.usage.prompt_tokens


def test_token_counts_include_images(vis, first_red):
    # count_tokens / countTokens gave the same count with or without an image.
    s, _ = vis
    b64 = base64.b64encode(RED).decode()
    text = {"role": "user", "content": [{"type": "text", "text": "What colour is this?"}]}
    with_image = {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}}, text["content"][0]]}
    # As generation counts it: the projector's tokens and its wrapper text.
    image = IMAGE_TOKENS + tokens(s, "<start_of_image>") + tokens(s, "<end_of_image>")
    count = lambda m: requests.post(s.url + "/v1/messages/count_tokens", json={"model": "smol-vision", "messages": [m]}, timeout=60).json()["input_tokens"]
    assert count(with_image) - count(text) == image
    gcount = lambda parts: requests.post(s.url + "/v1beta/models/smol-vision:countTokens", json={"contents": [{"role": "user", "parts": parts}]}, timeout=60).json()["totalTokens"]
    q = {"text": "What colour is this?"}
    assert gcount([q, {"inline_data": {"mime_type": "image/png", "data": b64}}]) - gcount([q]) == image


def test_the_ollama_door_takes_images_and_a_models_dir_pairs_the_projector(vis, mmproj, first_red):
    """The official `ollama` client sends `images` as base64: the same prompt as the
    OpenAI door's text-then-image message. A `--models-dir` model whose projector is
    named after it takes images too, listed as a vision model before it loads."""
    import ollama
    s, _ = vis
    msgs = [{"role": "user", "content": "What colour is this?", "images": [RED]}]
    r = ollama.Client(host=s.url).chat(model="smol-vision", messages=msgs, options={"num_predict": 4, "temperature": 0})
    assert r.done and r.prompt_eval_count == first_red.usage.prompt_tokens
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=s.url).chat(model="smol-vision", messages=[{"role": "user", "content": "Hi", "images": [base64.b64encode(b"nope").decode()]}])
    assert e.value.status_code == 400 and "PNG" in e.value.error
    d = tempfile.mkdtemp(prefix="parlance-vision-dir-")
    os.symlink(LM, f"{d}/smol.gguf")
    os.symlink(mmproj, f"{d}/mmproj-smol-f16.gguf")
    lazy = Server("--models-dir", d, "--db", "none", "-np", "2", "-t", "2")
    try:
        listed = requests.get(lazy.url + "/v1/models/smol", timeout=10).json()
        assert listed["capabilities"]["vision"] is True
        r = ollama.Client(host=lazy.url).chat(model="smol", messages=msgs, options={"num_predict": 4, "temperature": 0})
        assert r.prompt_eval_count == first_red.usage.prompt_tokens and r.load_duration > 0
    finally:
        lazy.stop()
