"""A real chain: Parlance as a gateway (--config) in front of Parlance serving local
models, reached as an OpenAI-compatible upstream, driven by the official openai SDK."""

import json
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests
from openai import OpenAI

from conftest import KEY, MODEL, Server

GW_KEY = "gateway-key"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


@pytest.fixture(scope="module")
def gateway(server, qwen):
    qwen_url = str(qwen.base_url).rstrip("/")
    config = f"""
[server]
api_keys = ["config-key"]

[routing]
retries = 1
backoff_ms = 10

[providers.local]
kind = "openai"
base_url = "{server.url}/v1"
api_key = "{KEY}"

[providers.qwen]
kind = "openai"
base_url = "{qwen_url}"
api_key = "none"

[providers.down]
kind = "openai"
base_url = "{closed_port_url()}"
api_key = "x"
connect_timeout = 1

[[models]]
name = "chain"
aliases = ["chain-alias"]
owned_by = "parlance-upstream"
context_length = 4096
deployments = [{{ provider = "local", model = "{MODEL}" }}]

[[models]]
name = "chain-qwen"
deployments = [{{ provider = "qwen", model = "qwen" }}]

[[models]]
name = "flaky"
deployments = [{{ provider = "down", model = "anything" }}]
fallbacks = ["chain"]

[[models]]
name = "travel"
base = "chain"
system_prompt = "You are a travel agent."
defaults = {{ max_tokens = 3, temperature = 0.0 }}
"""
    path = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    path.write(config)
    path.close()
    s = Server("--config", path.name, "--api-key", GW_KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gw(gateway):
    return OpenAI(base_url=gateway.url + "/v1", api_key=GW_KEY, max_retries=0, timeout=300)


def ask(c: OpenAI, model: str, **kw):
    return c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name three colors."}],
        max_tokens=24,
        temperature=0,
        **kw,
    )


def test_chain_answers_exactly_like_the_upstream(gw, client):
    direct = ask(client, MODEL)
    via = ask(gw, "chain")
    assert via.model == "chain"
    assert via.choices[0].message.content == direct.choices[0].message.content
    assert via.choices[0].finish_reason == direct.choices[0].finish_reason
    assert via.usage.prompt_tokens == direct.usage.prompt_tokens
    assert via.usage.completion_tokens == direct.usage.completion_tokens


def test_chain_streams_with_usage(gw, client):
    direct = ask(client, MODEL).choices[0].message.content
    chunks = list(ask(gw, "chain-alias", stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == direct
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_chain_tool_calls_stream_and_round_trip(gw):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    stream = gw.chat.completions.create(
        model="chain-qwen", messages=messages, tools=[WEATHER], tool_choice="required",
        temperature=0, stream=True,
    )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for tc in chunk.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = slot["id"] or tc.id
            slot["name"] += tc.function.name or ""
            slot["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    call = calls[0]
    assert call["name"] == "get_weather" and call["id"]
    assert "paris" in json.loads(call["arguments"])["city"].lower()

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21, "sky": "clear"}'},
    ]
    final = gw.chat.completions.create(model="chain-qwen", messages=messages, tools=[WEATHER], temperature=0, max_tokens=60)
    assert final.choices[0].finish_reason in ("stop", "length")
    assert "21" in final.choices[0].message.content


def test_fallback_model_answers_when_every_deployment_is_down(gw):
    r = ask(gw, "flaky")
    assert r.choices[0].message.content
    assert r.model == "flaky"


def test_upstream_errors_reach_the_caller_clearly(gw):
    # Valid for the gateway, too long for the upstream's context (17,408 tokens).
    with pytest.raises(openai.BadRequestError) as e:
        gw.chat.completions.create(model="chain", messages=[{"role": "user", "content": "hello " * 40000}], max_tokens=4)
    body = e.value.body
    assert "upstream `local` answered HTTP 400" in body["message"], body
    assert body["code"] == "context_length_exceeded", body
    with pytest.raises(openai.NotFoundError) as e:
        ask(gw, "no-such-model")
    assert e.value.body["code"] == "model_not_found"
    bad_key = OpenAI(base_url=gw.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        ask(bad_key, "chain")
    # Keys from the config file work beside --api-key.
    config_key = OpenAI(base_url=gw.base_url, api_key="config-key", max_retries=0)
    assert ask(config_key, "chain").choices[0].message.content


def test_catalog_metadata_and_preset_defaults(gw):
    models = {m.id: m for m in gw.models.list().data}
    assert {"chain", "chain-alias", "chain-qwen", "flaky", "travel"} <= set(models)
    assert models["chain"].owned_by == "parlance-upstream"
    assert models["chain"].model_extra["context_length"] == 4096
    r = gw.chat.completions.create(model="travel", messages=[{"role": "user", "content": "Hi"}])
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    # The preset's system prompt reached the upstream: the same prompt as sending it by hand
    # (SmolLM2's template puts a longer default system prompt in when there is none).
    by_hand = gw.chat.completions.create(model="chain", max_tokens=3, messages=[
        {"role": "system", "content": "You are a travel agent."}, {"role": "user", "content": "Hi"}])
    plain = gw.chat.completions.create(model="chain", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert r.usage.prompt_tokens == by_hand.usage.prompt_tokens != plain.usage.prompt_tokens


def test_client_leaving_the_gateway_cancels_the_upstream_generation(gateway, server):
    # Four long generations through the gateway fill the upstream's four slots; the
    # callers read a little and hang up.
    def start_and_leave(i):
        r = requests.post(
            gateway.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {GW_KEY}"},
            json={"model": "chain", "messages": [{"role": "user", "content": f"Story {i}"}],
                  "max_tokens": 3000, "stream": True, "ignore_eos": True},
            stream=True, timeout=30,
        )
        assert r.status_code == 200, r.text
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        r.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(start_and_leave, range(4)))
    r = requests.post(
        server.url + "/v1/chat/completions?debug=true",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    # Had the upstream kept generating 4 x 3000 tokens, this would queue for minutes.
    assert r.json()["debug"]["timings"]["queue_ms"] < 5000


def test_token_counts_pass_through_to_the_upstream(gateway, server):
    body = {"input": ["And the silken, sad, uncertain rustling of each purple curtain", "Здравей"]}
    via = requests.post(gateway.url + "/api/v1/tokens/count", headers={"Authorization": f"Bearer {GW_KEY}"},
                        json={"model": "chain", **body}, timeout=30)
    direct = requests.post(server.url + "/api/v1/tokens/count", headers={"Authorization": f"Bearer {KEY}"},
                           json={"model": MODEL, **body}, timeout=30)
    assert via.status_code == 200, via.text
    assert via.json() == direct.json()
    assert via.json()[0]["characters"] == 62
