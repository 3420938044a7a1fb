"""The web console in a real browser: Debian's headless Chromium driven by Selenium,
against the real binary and the default model. Screenshots of each page go to
$PARLANCE_SCREENSHOTS (default target/console-screenshots)."""

import base64
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import openai
import pytest
import requests
from openai import OpenAI
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import MODEL, ROOT, Server
from mock_upstreams import ANSWER, THOUGHT, Mock

SHOTS = pathlib.Path(os.environ.get("PARLANCE_SCREENSHOTS", ROOT / "target" / "console-screenshots"))
ADMIN = "console-admin-key"
GGUF = "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def chromium_binary():
    for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"):
        if os.path.exists(p):
            return p
    raise RuntimeError("no Chromium: scripts/setup.sh --test installs Debian's chromium and chromium-driver")


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium_binary()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900", "--lang=en-US"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait(driver, cond, timeout=60, what="condition"):
    # Re-rendered tables and messages replace their elements: a stale handle is a retry.
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: cond(d), message=what)


def shot(driver, name):
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def no_console_errors(driver):
    # CSP violations and script errors land in the browser log as SEVERE; failed
    # requests (the wrong admin key's 401) are the network's, asserted where made.
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert not errors, errors


def assistant_messages(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant")


def last_answer(driver, part=".body"):
    # Read in the page: a streaming message is re-rendered every frame, so element
    # handles go stale between finding and reading.
    return driver.execute_script(
        "const m = [...document.querySelectorAll('#messages .msg.assistant')].pop();"
        "return m ? m.querySelector(arguments[0]).textContent : '';", part)


def send(driver, text):
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def finished(driver):
    return driver.find_element(By.ID, "stop-button").get_attribute("hidden") is not None and not driver.find_elements(By.CSS_SELECTOR, ".msg.streaming")


def busy_slots(url, model):
    text = requests.get(url + "/metrics", timeout=5).text
    m = re.search(r'^parlance_busy_slots\{model="%s"\} (\d+)' % re.escape(model), text, re.M)
    return int(m.group(1)) if m else None


@pytest.fixture(scope="module")
def catalog_server():
    mock = Mock()
    cfg = pathlib.Path(tempfile.mkdtemp(prefix="parlance-console-")) / "parlance.toml"
    cfg.write_text(f"""
[providers.claude]
kind = "anthropic"
base_url = "{mock.url}/v1"
api_key = "sk-ant-mock"

[[models]]
name = "claude-mock"
deployments = [{{ provider = "claude", model = "claude-sonnet-4-5" }}]

[[models]]
name = "smol"
aliases = ["smol-latest"]
deployments = [{{ gguf = "{GGUF}" }}]

[[models]]
name = "smol-pirate"
base = "smol"
system_prompt = "You are a pirate. Answer like one."
defaults = {{ temperature = 0.3 }}

[[models]]
name = "smol-vision"             # says it sees, so the playground offers attachments
vision = true
deployments = [{{ gguf = "{GGUF}" }}]
""")
    s = Server("--config", str(cfg), "-np", "2")
    yield s
    s.stop()
    mock.stop()


def test_playground_streams_stops_edits_and_switches_models(browser, catalog_server):
    d, url = browser, catalog_server.url
    d.get(url + "/")
    wait(d, lambda d: len(Select(d.find_element(By.ID, "model")).options) == 5, what="models listed")
    names = [o.text for o in Select(d.find_element(By.ID, "model")).options]
    assert names == ["claude-mock", "smol", "smol-latest", "smol-pirate", "smol-vision"], names
    Select(d.find_element(By.ID, "model")).select_by_visible_text("smol")
    d.find_element(By.ID, "max_tokens").send_keys("600")
    d.find_element(By.ID, "temperature").send_keys("0.8")

    # The answer streams in: its text grows while the request is open.
    send(d, "Write a very long story about a dragon who learns to bake bread.")
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant.streaming .body p"), what="first tokens")
    first = len(last_answer(d))
    wait(d, lambda d: len(last_answer(d)) > first + 20, what="more tokens")
    assert busy_slots(url, "smol") == 1
    shot(d, "playground-streaming")

    # Stop cancels the request and the server frees the slot.
    d.find_element(By.ID, "stop-button").click()
    wait(d, finished, what="stopped")
    stats = last_answer(d, ".stats")
    assert "finish: stopped" in stats and "tokens/s" in stats and "first token" in stats, stats
    wait(d, lambda _: busy_slots(url, "smol") == 0, timeout=10, what="slot freed")

    # Another model: the preset answers under its own name.
    Select(d.find_element(By.ID, "model")).select_by_visible_text("smol-pirate")
    d.find_element(By.ID, "max_tokens").clear()
    d.find_element(By.ID, "max_tokens").send_keys("12")
    send(d, "Say hello.")
    wait(d, lambda d: len(assistant_messages(d)) == 2 and finished(d), what="second answer")
    stats = last_answer(d, ".stats")
    n = int(re.search(r"(\d+) tokens ", stats).group(1))
    assert stats.startswith("smol-pirate") and 1 <= n <= 12 and ("finish: length" not in stats or n == 12), stats
    assert last_answer(d).strip()

    # Regenerate replaces the last answer; editing a question drops what followed it.
    before = last_answer(d, ".stats")
    assistant_messages(d)[-1].find_element(By.XPATH, ".//button[text()='Regenerate']").click()
    wait(d, lambda d: len(assistant_messages(d)) == 2 and finished(d), what="regenerated")
    assert last_answer(d, ".stats").startswith("smol-pirate"), before
    users = d.find_elements(By.CSS_SELECTOR, "#messages .msg.user")
    users[0].find_element(By.XPATH, ".//button[text()='Edit']").click()
    ta = users[0].find_element(By.CSS_SELECTOR, "textarea")
    ta.clear()
    ta.send_keys("Name three colours.")
    users[0].find_element(By.XPATH, ".//button[text()='Save and send']").click()
    wait(d, lambda d: len(assistant_messages(d)) == 1 and finished(d), what="edited answer")
    assert d.find_elements(By.CSS_SELECTOR, "#messages .msg.user")[0].text.count("Name three colours.") == 1
    shot(d, "playground")

    # Conversations survive a reload (local storage) and export as JSON.
    d.refresh()
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#messages .msg")) == 2, what="conversation restored")
    stored = d.execute_script("return JSON.parse(localStorage.getItem('parlance.conversations'))")
    assert stored[0]["messages"][0]["content"] == "Name three colours." and stored[0]["model"] == "smol-pirate"
    no_console_errors(d)


def copied(d, button):
    # Headless Chromium has no clipboard to read back: keep what the page writes.
    d.execute_script("window.__copied = []; navigator.clipboard.writeText = (t) => { window.__copied.push(t); return Promise.resolve(); };")
    d.find_element(By.CSS_SELECTOR, f'[data-copy="{button}"]').click()
    return wait(d, lambda d: d.execute_script("return window.__copied[0]"), what="copied")


def test_copy_as_code_runs_and_schema_and_images_reach_the_server(browser, catalog_server):
    d, url = browser, catalog_server.url
    d.get(url + "/")
    wait(d, lambda d: len(Select(d.find_element(By.ID, "model")).options) == 5, what="models listed")
    d.find_element(By.ID, "new-chat").click()
    Select(d.find_element(By.ID, "model")).select_by_visible_text("smol")
    assert not d.find_element(By.ID, "attach-label").is_displayed()
    for f, v in (("max_tokens", "40"), ("temperature", "0"), ("seed", "7")):
        d.find_element(By.ID, f).clear()
        d.find_element(By.ID, f).send_keys(v)
    d.find_element(By.ID, "prompt").send_keys("What is the capital of France?")

    # "Copy as" gives commands that run as they are against this server.
    curl = copied(d, "curl")
    assert curl.startswith(f"curl {url}/v1/chat/completions") and '"seed": 7' in curl, curl
    out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
    body = json.loads(out.stdout)
    assert body["model"] == "smol" and body["choices"][0]["message"]["content"], out
    py = copied(d, "python")
    assert "from openai import OpenAI" in py and "'temperature': 0" not in py, py
    out = subprocess.run([sys.executable, "-c", py], capture_output=True, text=True, timeout=120)
    # Not compared with curl's text: the second run hits the prefix cache, and greedy
    # decoding over different batch shapes may pick another token late in the answer.
    assert out.returncode == 0 and out.stdout.strip(), out
    js = copied(d, "js")
    assert f'baseURL: "{url}/v1"' in js and '"max_tokens": 40' in js, js

    # The JSON-schema panel constrains the answer.
    d.find_element(By.CSS_SELECTOR, "#advanced summary").click()
    d.find_element(By.ID, "schema").send_keys('{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}')
    d.find_element(By.ID, "prompt").send_keys(Keys.ENTER)
    wait(d, lambda d: len(assistant_messages(d)) == 1 and finished(d), what="schema answer")
    answer = json.loads(last_answer(d))
    assert isinstance(answer["city"], str), answer
    bad = d.find_element(By.ID, "tools")
    bad.send_keys("[not json")
    send(d, "again")
    wait(d, lambda d: d.find_element(By.ID, "error").is_displayed(), what="tools error")
    assert "Tools is not valid JSON" in d.find_element(By.ID, "error").text
    bad.clear()

    # A vision model offers attachments; the image goes out as an image_url part
    # (this text-only engine refuses it with a 400 naming the part, shown as such).
    Select(d.find_element(By.ID, "model")).select_by_visible_text("smol-vision")
    d.find_element(By.ID, "schema").clear()
    assert d.find_element(By.ID, "attach-label").is_displayed()
    png = pathlib.Path(tempfile.mkdtemp()) / "red.png"
    png.write_bytes(base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="))
    d.find_element(By.ID, "attach").send_keys(str(png))
    wait(d, lambda d: "1 image" in d.find_element(By.ID, "attached").text, what="attached")
    send(d, "What colour is this?")
    wait(d, lambda d: finished(d) and d.find_elements(By.CSS_SELECTOR, ".msg.assistant .error"), what="image refused")
    err = d.find_elements(By.CSS_SELECTOR, ".msg.assistant .error")[-1].text
    assert "image" in err.lower() and "messages[" in err, err
    assert d.find_elements(By.CSS_SELECTOR, ".msg.user img.attached")

    # Phone width: one column, nothing cut off sideways.
    d.set_window_size(390, 844)
    try:
        assert d.execute_script("return document.documentElement.scrollWidth") <= 390
        shot(d, "playground-phone")
    finally:
        d.set_window_size(1280, 900)
    no_console_errors(d)


def test_an_upstream_model_with_reasoning_and_tool_calls(browser, catalog_server):
    d = browser
    d.get(catalog_server.url + "/")
    wait(d, lambda d: len(Select(d.find_element(By.ID, "model")).options) == 5, what="models listed")
    d.find_element(By.ID, "new-chat").click()
    Select(d.find_element(By.ID, "model")).select_by_visible_text("claude-mock")
    Select(d.find_element(By.ID, "reasoning_effort")).select_by_visible_text("low")
    send(d, "What is the weather in Sofia?")
    wait(d, lambda d: len(assistant_messages(d)) == 1 and finished(d), what="upstream answer")
    assert last_answer(d).strip() == ANSWER
    # The reasoning is there, folded.
    details = assistant_messages(d)[0].find_element(By.CSS_SELECTOR, "details.reasoning")
    visible = "return arguments[0].querySelector('.reasoning-text').checkVisibility()"
    assert details.get_attribute("open") is None and not d.execute_script(visible, details)
    details.find_element(By.TAG_NAME, "summary").click()
    assert d.execute_script(visible, details) and THOUGHT in details.text
    # Offered a tool, the model calls it; the call is shown.
    d.find_element(By.ID, "new-chat").click()
    d.find_element(By.CSS_SELECTOR, "#advanced summary").click()
    d.find_element(By.ID, "tools").send_keys('[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]')
    send(d, "Weather in Sofia?")
    wait(d, lambda d: len(assistant_messages(d)) == 1 and finished(d), what="tool call")
    assert 'get_weather({"city": "Sofia"})' in last_answer(d), last_answer(d)
    assert "finish: tool_calls" in last_answer(d, ".stats")
    d.find_element(By.ID, "tools").clear()
    d.find_element(By.CSS_SELECTOR, "#advanced summary").click()
    no_console_errors(d)


def test_markdown_is_rendered_as_dom_never_as_html(browser, catalog_server):
    d = browser
    d.get(catalog_server.url + "/")
    html = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/console/markdown.js').then((m) => {
          const box = document.createElement('div');
          box.append(m.renderMarkdown('# Title\\n\\nSome **bold** and `code` <img src=x onerror=alert(1)>\\n\\n```python\\ndef f():\\n    return "s"  # note\\n```\\n- one\\n- two'));
          done(box.innerHTML);
        });
    """)
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html, html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html, html
    assert '<span class="tok-kw">def</span>' in html and '<span class="tok-str">"s"</span>' in html, html
    assert '<span class="tok-com"># note</span>' in html and "<li>one</li>" in html, html


def test_console_assets_are_embedded_with_a_strict_policy(catalog_server):
    r = requests.get(catalog_server.url + "/console/playground.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    again = requests.get(catalog_server.url + "/console/playground.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content
    page = requests.get(catalog_server.url + "/admin")
    assert page.status_code == 200 and "<script" in page.text and "<script>" not in page.text
    assert page.headers["content-security-policy"] == csp and page.headers["x-frame-options"] == "DENY"
    missing = requests.get(catalog_server.url + "/console/nope.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"


@pytest.fixture(scope="module")
def admin_server():
    # Beside the default model, a pool whose second deployment never answers: the
    # live view shows its failures and cooldown while the pool keeps serving.
    cfg = pathlib.Path(tempfile.mkdtemp(prefix="parlance-console-")) / "parlance.toml"
    cfg.write_text(f"""
[providers.dead]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "none"

[[models]]
name = "balanced"
aliases = ["balanced-latest"]
# Weighted 100:1 so the first request tries the dead one (then cooled down, it is skipped).
deployments = [{{ gguf = "{GGUF}" }}, {{ provider = "dead", model = "gone", weight = 100 }}]
routing = {{ cooldown_after = 1, cooldown_secs = 60 }}
""")
    s = Server("-m", GGUF, "-a", MODEL, "--config", str(cfg), "-np", "2", "--admin-key", ADMIN)
    yield s
    s.stop()


def tab(d, name):
    d.find_element(By.ID, f"tab-{name}").click()
    wait(d, lambda d: d.find_element(By.ID, f"panel-{name}").get_attribute("hidden") is None, what=f"{name} tab")


def test_admin_creates_a_key_sees_its_usage_and_revokes_it(browser, admin_server):
    d, url = browser, admin_server.url
    d.get(url + "/admin")
    wait(d, lambda d: d.find_element(By.ID, "login").is_displayed(), what="login form")
    d.find_element(By.ID, "admin-key").send_keys("wrong" + Keys.ENTER)
    wait(d, lambda d: d.find_element(By.ID, "login-error").is_displayed(), what="refused")
    assert "admin key" in d.find_element(By.ID, "login-error").text
    d.find_element(By.ID, "admin-key").clear()
    d.find_element(By.ID, "admin-key").send_keys(ADMIN + Keys.ENTER)
    wait(d, lambda d: d.find_element(By.ID, "dash").is_displayed(), what="dashboard")

    # Create a key; it is shown once.
    d.find_element(By.ID, "k-name").send_keys("browser-key")
    d.find_element(By.ID, "k-rpm").send_keys("100")
    d.find_element(By.CSS_SELECTOR, "#create-key button[type=submit]").click()
    wait(d, lambda d: d.find_element(By.ID, "new-key").is_displayed(), what="new key")
    key = d.find_element(By.ID, "new-key-value").text.strip()
    assert len(key) > 20
    row = wait(d, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#keys-table tbody tr") if "browser-key" in r.text], what="key listed")[0]
    assert "100 rpm" in row.text and "active" in row.text and key not in d.find_element(By.ID, "keys-table").text
    # Edit its limits and allowed models in place.
    row.find_element(By.XPATH, ".//button[text()='Edit']").click()
    rpm = d.find_element(By.CSS_SELECTOR, '#keys-table input[aria-label="Requests per minute"]')
    rpm.clear()
    rpm.send_keys("50")
    d.find_element(By.CSS_SELECTOR, '#keys-table input[aria-label="Allowed models"]').send_keys(f"{MODEL}, balanced")
    d.find_element(By.XPATH, "//table[@id='keys-table']//button[text()='Save']").click()
    row = wait(d, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#keys-table tbody tr") if "browser-key" in r.text and "50 rpm" in r.text], what="edited")[0]
    assert f"{MODEL}, balanced" in row.text, row.text
    shot(d, "admin-keys")

    # The key works with the official SDK...
    client = OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert r.usage.completion_tokens == 5
    # ...and in the playground, entered once and kept in local storage.
    d.get(url + "/")
    d.find_element(By.ID, "key-button").click()
    d.find_element(By.ID, "key-input").send_keys(key + Keys.ENTER)
    wait(d, lambda d: MODEL in [o.text for o in Select(d.find_element(By.ID, "model")).options], what="models with the key")
    d.find_element(By.ID, "new-chat").click()
    d.find_element(By.ID, "max_tokens").clear()
    d.find_element(By.ID, "max_tokens").send_keys("6")
    send(d, "Hello there")
    wait(d, lambda d: len(assistant_messages(d)) == 1 and finished(d), what="answer with the key")
    stats = last_answer(d, ".stats")
    n = int(re.search(r"(\d+) tokens ", stats).group(1))
    assert 1 <= n <= 6 and ("finish: length" not in stats or n == 6), stats

    # Usage by key: the chart and the totals show both requests.
    d.get(url + "/admin")
    wait(d, lambda d: d.find_element(By.ID, "dash").is_displayed(), what="still logged in")
    tab(d, "usage")
    Select(d.find_element(By.ID, "u-group")).select_by_value("key")

    def usage_row(d):
        rows = [r for r in d.find_elements(By.CSS_SELECTOR, "#totals-table tbody tr") if "browser-key" in r.text]
        return rows and rows[0].find_elements(By.TAG_NAME, "td")[1].text == "2" and rows[0]

    def legend_ok(d):
        d.find_element(By.ID, "u-refresh").click()
        return "browser-key" in d.find_element(By.CSS_SELECTOR, "#chart-requests .legend").text and usage_row(d)

    wait(d, legend_ok, timeout=20, what="usage of the key")
    assert "browser-key" in d.find_element(By.CSS_SELECTOR, "#chart-requests .legend").text
    assert d.find_elements(By.CSS_SELECTOR, "#chart-requests svg polyline")
    latency = d.find_element(By.ID, "latency-table").text
    assert MODEL in latency, latency
    shot(d, "admin-usage")

    # Live: the local model's slots and the tokens generated.
    tab(d, "live")
    card = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, f'#live [data-model="{MODEL}"]'), what="live card")[0]
    assert "of 2" in card.find_element(By.CSS_SELECTOR, '[data-field="busy"]').text
    # The pool: requests succeed on the local deployment; the dead one shows its
    # failures and its cooldown.
    pool_client = OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
    for _ in range(4):
        pool_client.chat.completions.create(model="balanced", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    dead = wait(d, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, '#live [data-model="balanced"] tr') if "dead/gone" in r.text and "100.0%" in r.text], timeout=10, what="dead deployment")[0]
    assert "cooling down" in dead.text, dead.text
    shot(d, "admin-live")
    tab(d, "catalog")
    row = wait(d, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#catalog-table tbody tr") if r.text.startswith("balanced")], what="catalog")[0]
    assert "balanced-latest" in row.text and "dead/gone (weight 100)" in row.text, row.text
    assert MODEL in d.find_element(By.ID, "catalog-table").text

    # Revoke: the SDK gets 401 at once.
    tab(d, "keys")
    row = wait(d, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#keys-table tbody tr") if "browser-key" in r.text], what="key row")[0]
    row.find_element(By.XPATH, ".//button[text()='Revoke']").click()
    d.switch_to.alert.accept()
    wait(d, lambda d: any("browser-key" in r.text and "revoked" in r.text for r in d.find_elements(By.CSS_SELECTOR, "#keys-table tbody tr")), what="revoked")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    no_console_errors(d)


def test_admin_status_and_series_api(admin_server):
    h = {"Authorization": f"Bearer {ADMIN}"}
    s = requests.get(admin_server.url + "/admin/status", headers=h).json()
    m = next(m for m in s["models"] if m["id"] == MODEL)
    assert m["load"]["slots"] == 2 and m["down"] is None and "generated_tokens" in m["load"]
    pool = next(m for m in s["models"] if m["id"] == "balanced")
    assert pool["aliases"] == ["balanced-latest"] and [x["name"] for x in pool["deployments"]][1] == "dead/gone"
    assert not any(m["id"] == "balanced-latest" for m in s["models"])
    assert requests.get(admin_server.url + "/admin/status").status_code == 401
    bad = requests.get(admin_server.url + "/admin/usage/series?bucket=week", headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "bucket"
    bad = requests.get(admin_server.url + "/admin/usage/series?group_by=day", headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
    # Two requests of one key land in its minute buckets, each bucket aligned.
    t0 = int(time.time())
    key = requests.post(admin_server.url + "/admin/keys", headers=h, json={"name": "series"}).json()["key"]
    key_id = requests.get(admin_server.url + "/v1/key", headers={"Authorization": f"Bearer {key}"}).json()["id"]
    c = OpenAI(base_url=admin_server.url + "/v1", api_key=key, max_retries=0, timeout=60)
    for _ in range(2):
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    deadline = time.time() + 10
    while time.time() < deadline:
        pts = requests.get(admin_server.url + f"/admin/usage/series?bucket=minute&group_by=key&from={t0 - 60}", headers=h).json()
        mine = [p for p in pts["data"] if p["group"] == key_id]
        if sum(p["requests"] for p in mine) == 2:
            break
        time.sleep(0.2)
    assert pts["bucket_s"] == 60 and sum(p["requests"] for p in mine) == 2, pts
    assert all(p["t"] % 60 == 0 for p in mine) and sum(p["tokens"] for p in mine) > 6
    lat = requests.get(admin_server.url + "/admin/usage/latency", headers=h).json()["data"]
    row = next(r for r in lat if r["model"] == MODEL)
    assert row["requests"] >= 2 and 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]


def test_acceptance_suite_defects_in_the_console(browser):
    # Found by the console acceptance suite: copied Python rewrote true/false/null inside
    # strings, the chat title ignored an edited first question, empty "New chat" entries
    # piled up, the key behind copied code went unsaid, a wrong key read as a missing one,
    # the Keys table widened the page at 390 px, upstream models showed context 0, and
    # an all-zero cost axis read 0.0001 / 0.0001 / 0.0000.
    cfg = pathlib.Path(tempfile.mkdtemp(prefix="parlance-console-")) / "parlance.toml"
    cfg.write_text(f"""
[providers.far]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "none"

[[models]]
name = "far-away"
deployments = [{{ provider = "far", model = "gone" }}]

[[models]]
name = "smol"
deployments = [{{ gguf = "{GGUF}" }}]
""")
    s = Server("--config", str(cfg), "-np", "2", "--admin-key", ADMIN, "--api-key", "right-key")
    d, url = browser, s.url
    try:
        d.get(url + "/")
        d.execute_script("localStorage.clear()")
        d.get(url + "/")
        wait(d, lambda d: d.find_element(By.ID, "error").is_displayed(), what="missing key")
        assert "needs an API key" in d.find_element(By.ID, "error").text
        d.find_element(By.ID, "key-button").click()
        d.find_element(By.ID, "key-input").send_keys("wrong-key" + Keys.ENTER)
        wait(d, lambda d: "refused" in d.find_element(By.ID, "error").text, what="wrong key said so")
        d.find_element(By.ID, "key-button").click()
        d.find_element(By.ID, "key-input").clear()
        d.find_element(By.ID, "key-input").send_keys("right-key" + Keys.ENTER)
        wait(d, lambda d: "smol" in [o.text for o in Select(d.find_element(By.ID, "model")).options], what="models")
        assert d.find_element(By.ID, "key-note").is_displayed()
        Select(d.find_element(By.ID, "model")).select_by_visible_text("smol")
        for _ in range(3):
            d.find_element(By.ID, "new-chat").click()
        titles = [b.text for b in d.find_elements(By.CSS_SELECTOR, "#conversations .open")]
        assert titles.count("New chat") == 1, titles

        question = 'Is it true that null is false? Say "true" or "false".'
        d.find_element(By.ID, "max_tokens").clear()
        d.find_element(By.ID, "max_tokens").send_keys("3")
        d.find_element(By.ID, "prompt").send_keys(question)
        py = copied(d, "python")
        assert json.dumps(question) in py and '"max_tokens": 3' in py, py
        env = {**os.environ, "PARLANCE_API_KEY": "right-key"}
        out = subprocess.run([sys.executable, "-c", py], capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr

        send(d, "First question")
        wait(d, lambda d: len(assistant_messages(d)) == 1 and finished(d), what="answer")
        d.find_element(By.XPATH, "//article[contains(@class,'user')]//button[text()='Edit']").click()
        box = d.find_element(By.CSS_SELECTOR, "#messages textarea")
        box.clear()
        box.send_keys("Edited question")
        d.find_element(By.XPATH, "//button[text()='Save and send']").click()
        wait(d, lambda d: finished(d) and "Edited question" in [b.text for b in d.find_elements(By.CSS_SELECTOR, "#conversations .open")], what="title follows the edit")

        d.get(url + "/admin")
        wait(d, lambda d: d.find_element(By.ID, "login").is_displayed(), what="login form")
        # (An empty key is the form's own `required` check.)
        d.find_element(By.ID, "admin-key").send_keys("wrong" + Keys.ENTER)
        wait(d, lambda d: "refused" in d.find_element(By.ID, "login-error").text, what="wrong admin key")
        d.find_element(By.ID, "admin-key").clear()
        d.find_element(By.ID, "admin-key").send_keys(ADMIN + Keys.ENTER)
        wait(d, lambda d: d.find_element(By.ID, "dash").is_displayed(), what="dashboard")
        requests.post(url + "/admin/keys", json={"name": "a-key-with-a-rather-long-name-for-a-phone"}, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
        d.refresh()
        wait(d, lambda d: any("a-key-with" in r.text for r in d.find_elements(By.CSS_SELECTOR, "#keys-table tbody tr")), what="key listed")
        d.set_window_size(390, 844)
        try:
            assert d.execute_script("return document.documentElement.scrollWidth") <= 390
            shot(d, "admin-keys-phone")
        finally:
            d.set_window_size(1280, 900)
        tab(d, "catalog")
        row = wait(d, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#catalog-table tbody tr") if "far-away" in r.text], what="catalog")[0]
        assert row.find_elements(By.TAG_NAME, "td")[3].text.startswith("unknown"), row.text
        tab(d, "usage")
        ticks = wait(d, lambda d: d.execute_script(
            "return [...document.querySelectorAll('#chart-cost svg text')].map(t => t.textContent)"), what="cost axis")
        y_ticks = ticks[:3]
        assert len(set(y_ticks)) == 3, ticks
    finally:
        s.stop()


def test_the_live_view_shows_models_loaded_on_demand(browser):
    """A --models-dir model: not loaded at first, loaded with its load time and memory
    after a request, and back to not loaded after keep_alive 0."""
    d = tempfile.mkdtemp(prefix="parlance-console-dir-")
    os.symlink(ROOT / GGUF, f"{d}/smol.gguf")
    s = Server("--models-dir", d, "--admin-key", ADMIN)
    try:
        drv = browser
        drv.get(s.url + "/admin")
        wait(drv, lambda x: x.find_element(By.ID, "login").is_displayed(), what="login form")
        drv.find_element(By.ID, "admin-key").send_keys(ADMIN + Keys.ENTER)
        wait(drv, lambda x: x.find_element(By.ID, "dash").is_displayed(), what="dashboard")
        tab(drv, "live")
        line = lambda x: x.find_element(By.CSS_SELECTOR, '#live [data-model="smol"] [data-field="residency"]').text
        wait(drv, lambda x: "Not loaded" in line(x), what="not loaded yet")
        key = requests.post(s.url + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"}, json={"name": "dir"}, timeout=10).json()["key"]
        c = OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0, timeout=60)
        c.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        wait(drv, lambda x: "Loaded on demand" in line(x) and "MiB" in line(x) and "unloads in" in line(x), timeout=10, what="loaded")
        shot(drv, "admin-live-on-demand")
        requests.post(s.url + "/api/chat", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "keep_alive": 0, "stream": False,
                            "options": {"num_predict": 2}}).raise_for_status()
        wait(drv, lambda x: "Not loaded" in line(x), timeout=10, what="unloaded")
        no_console_errors(drv)
    finally:
        s.stop()
