"""Parlance as a gateway between formats: an Anthropic-SDK caller reaching a Gemini
upstream, a Gemini-SDK caller reaching an Anthropic upstream, and an OpenAI
Responses caller reaching either; loopback mocks speak each provider's real wire
format, and the test checks what each upstream received in its native form."""

import json
import subprocess
import tempfile

import anthropic
import openai
import pytest
import requests
from google import genai
from google.genai import types

from conftest import BIN, Server
from mock_upstreams import ANSWER, CITY_ARGS, SIGNATURE, THOUGHT, Mock

WEATHER_ANTHROPIC = {"name": "get_weather", "description": "Current weather for a city",
                     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
RESULT = {"temperature_c": 23, "sky": "clear"}


@pytest.fixture(scope="module")
def cross():
    mock = Mock()
    d = tempfile.mkdtemp(prefix="parlance-cross-")
    cfg = f"{d}/gw.toml"
    with open(cfg, "w") as f:
        f.write(f"""
[providers.claude]
kind = "anthropic"
base_url = "{mock.url}/v1"
api_key = "sk-ant-mock"

[providers.gem]
kind = "gemini"
base_url = "{mock.url}/v1beta"
api_key = "gem-mock-key"

[providers.vllm]
kind = "openai"
base_url = "{mock.url}/v1"
api_key = "x"

[providers.strict]
kind = "openai"
base_url = "{mock.url}/strict/v1"
api_key = "x"
forward_unknown_fields = false

[[models]]
name = "via-openai"
deployments = [{{ provider = "vllm", model = "vllm-mock" }}]

[[models]]
name = "via-strict"
deployments = [{{ provider = "strict", model = "strict-mock" }}]

[[models]]
name = "via-gemini"
deployments = [{{ provider = "gem", model = "gemini-mock" }}]

[[models]]
name = "via-claude"
deployments = [{{ provider = "claude", model = "claude-mock" }}]
""")
    gw = Server("--config", cfg, "--db", f"sqlite://{d}/gw.db")
    yield gw, mock
    gw.stop()
    mock.stop()


def last(mock, fragment):
    return [r for r in mock.requests if fragment in r["path"]][-1]


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_caller_to_gemini_upstream(cross, stream):
    gw, mock = cross
    c = anthropic.Anthropic(base_url=gw.url, api_key="any", max_retries=0)
    ask = [{"role": "user", "content": "Weather in Sofia?"}]
    kw = dict(model="via-gemini", max_tokens=100, tools=[WEATHER_ANTHROPIC], messages=ask)
    if stream:
        with c.messages.stream(**kw) as s:
            deltas = [ev.delta.type for ev in s if ev.type == "content_block_delta"]
            m = s.get_final_message()
        assert "input_json_delta" in deltas
        assert ":streamGenerateContent" in last(mock, "gemini-mock")["path"]
    else:
        m = c.messages.create(**kw)
    use = next(b for b in m.content if b.type == "tool_use")
    assert m.stop_reason == "tool_use" and use.name == "get_weather" and use.input == CITY_ARGS
    sent = last(mock, "gemini-mock")
    assert sent["headers"].get("x-goog-api-key") == "gem-mock-key"
    assert sent["body"]["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    follow = ask + [{"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": json.dumps(RESULT)}]}]
    r = c.messages.create(model="via-gemini", max_tokens=100, tools=[WEATHER_ANTHROPIC], messages=follow)
    assert r.stop_reason == "end_turn" and r.content[0].text == ANSWER
    parts = [p for content in last(mock, "gemini-mock")["body"]["contents"] for p in content["parts"]]
    call = next(p["functionCall"] for p in parts if "functionCall" in p)
    resp = next(p["functionResponse"] for p in parts if "functionResponse" in p)
    assert call == {"name": "get_weather", "args": CITY_ARGS} and resp["name"] == "get_weather"
    assert json.dumps(RESULT) in json.dumps(resp["response"]) or resp["response"].get("temperature_c") == 23


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_caller_to_anthropic_upstream(cross, stream):
    gw, mock = cross
    g = genai.Client(api_key="any", http_options=types.HttpOptions(base_url=gw.url))
    weather = types.FunctionDeclaration(name="get_weather", description="Current weather for a city",
                                        parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")}, required=["city"]))
    cfg = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[weather])],
                                      automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True), max_output_tokens=100)
    ask = [types.Content(role="user", parts=[types.Part(text="Weather in Sofia?")])]
    if stream:
        calls = [fc for ch in g.models.generate_content_stream(model="via-claude", contents=ask, config=cfg) for fc in (ch.function_calls or [])]
        assert last(mock, "/messages")["body"]["stream"] is True
    else:
        calls = g.models.generate_content(model="via-claude", contents=ask, config=cfg).function_calls
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].args == CITY_ARGS
    sent = last(mock, "/messages")
    assert sent["headers"].get("x-api-key") == "sk-ant-mock" and "anthropic-version" in sent["headers"]
    assert sent["body"]["tools"][0]["name"] == "get_weather" and sent["body"]["tools"][0]["input_schema"]["properties"]["city"]["type"].lower() == "string"
    follow = ask + [types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(name="get_weather", args=calls[0].args))]),
                    types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(name="get_weather", response=RESULT))])]
    text = g.models.generate_content(model="via-claude", contents=follow, config=cfg).text
    assert text == ANSWER
    msgs = last(mock, "/messages")["body"]["messages"]
    use = next(b for m in msgs if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_use")
    result = next(b for m in msgs if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_result")
    assert use["name"] == "get_weather" and use["input"] == CITY_ARGS and result["tool_use_id"] == use["id"]
    assert "23" in json.dumps(result["content"])


def test_responses_caller_to_both(cross):
    gw, mock = cross
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="any", max_retries=0)
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER_ANTHROPIC["input_schema"]}
    for model in ("via-claude", "via-gemini"):
        with c.responses.stream(model=model, input="Weather in Sofia?", tools=[tool]) as s:
            final = s.get_final_response()
        call = next(o for o in final.output if o.type == "function_call")
        assert json.loads(call.arguments) == CITY_ARGS
        r = c.responses.create(model=model, previous_response_id=final.id, tools=[tool],
                               input=[{"type": "function_call_output", "call_id": call.call_id, "output": json.dumps(RESULT)}])
        assert r.output_text == ANSWER


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_thinking_signatures_stop_sequences_and_cache_usage_pass_through(cross, stream):
    gw, mock = cross
    c = anthropic.Anthropic(base_url=gw.url, api_key="any", max_retries=0)
    ask = [{"role": "user", "content": "Weather in Sofia?"}]
    kw = dict(model="via-claude", max_tokens=4096, tools=[WEATHER_ANTHROPIC], messages=ask, thinking={"type": "enabled", "budget_tokens": 2048})
    if stream:
        with c.messages.stream(**kw) as s:
            deltas = [ev.delta.type for ev in s if ev.type == "content_block_delta"]
            m = s.get_final_message()
        assert "signature_delta" in deltas and "thinking_delta" in deltas
    else:
        m = c.messages.create(**kw)
    assert last(mock, "/messages")["body"]["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    thinking = next(b for b in m.content if b.type == "thinking")
    assert thinking.thinking == THOUGHT and thinking.signature == SIGNATURE
    assert m.usage.cache_creation_input_tokens == 3 and m.usage.cache_read_input_tokens == 2 and m.usage.input_tokens == 12
    use = next(b for b in m.content if b.type == "tool_use")
    # The next turn sends the signed thinking back, first, and a failed tool result.
    follow = ask + [{"role": "assistant", "content": [{"type": "thinking", "thinking": thinking.thinking, "signature": thinking.signature},
                                                      {"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "service down", "is_error": True}]}]
    r = c.messages.create(model="via-claude", max_tokens=4096, tools=[WEATHER_ANTHROPIC], messages=follow, stop_sequences=["degrees"])
    sent = last(mock, "/messages")["body"]["messages"]
    assistant = next(m for m in sent if m["role"] == "assistant")
    assert assistant["content"][0] == {"type": "thinking", "thinking": THOUGHT, "signature": SIGNATURE}
    result = next(b for m in sent if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_result")
    assert result["is_error"] is True
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == "degrees" and r.content[-1].text == ANSWER[:ANSWER.index("degrees")]


def test_reasoning_settings_cross_formats(cross):
    gw, mock = cross
    # Anthropic's thinking budget reaches Gemini as thinkingBudget.
    c = anthropic.Anthropic(base_url=gw.url, api_key="any", max_retries=0)
    c.messages.create(model="via-gemini", max_tokens=100, messages=[{"role": "user", "content": "Hi"}], thinking={"type": "enabled", "budget_tokens": 2048})
    assert last(mock, "gemini-mock")["body"]["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048, "includeThoughts": True}
    # OpenAI's reasoning_effort reaches Anthropic as a thinking budget, and Gemini's
    # thinkingBudget reaches Anthropic the same way.
    o = openai.OpenAI(base_url=gw.url + "/v1", api_key="any", max_retries=0)
    o.chat.completions.create(model="via-claude", messages=[{"role": "user", "content": "Hi"}], max_tokens=20000, reasoning_effort="high")
    assert last(mock, "/messages")["body"]["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    g = genai.Client(api_key="any", http_options=types.HttpOptions(base_url=gw.url))
    g.models.generate_content(model="via-claude", contents="Hi", config=types.GenerateContentConfig(max_output_tokens=4096, thinking_config=types.ThinkingConfig(thinking_budget=1500)))
    assert last(mock, "/messages")["body"]["thinking"] == {"type": "enabled", "budget_tokens": 1500}


def test_each_upstream_gets_only_its_own_providers_options(cross):
    gw, mock = cross
    o = openai.OpenAI(base_url=gw.url + "/v1", api_key="any", max_retries=0)
    c = anthropic.Anthropic(base_url=gw.url, api_key="any", max_retries=0)
    g = genai.Client(api_key="any", http_options=types.HttpOptions(base_url=gw.url))
    # An OpenAI caller's unrecognised fields reach an OpenAI-compatible upstream, unless
    # its catalog entry says forward_unknown_fields = false.
    o.chat.completions.create(model="via-openai", messages=[{"role": "user", "content": "Hi"}],
                              extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert last(mock, "/v1/chat/completions")["body"]["chat_template_kwargs"] == {"enable_thinking": False}
    o.chat.completions.create(model="via-strict", messages=[{"role": "user", "content": "Hi"}],
                              extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert "chat_template_kwargs" not in last(mock, "/strict/v1/chat/completions")["body"]
    # An Anthropic caller's own fields go to Anthropic as given, never to an OpenAI body.
    c.messages.create(model="via-openai", max_tokens=10, messages=[{"role": "user", "content": "Hi"}],
                      extra_body={"service_tier": "standard_only", "container": "c1"})
    sent = last(mock, "/v1/chat/completions")["body"]
    assert "service_tier" not in sent and "container" not in sent, sent
    c.messages.create(model="via-claude", max_tokens=10, messages=[{"role": "user", "content": "Hi"}],
                      metadata={"user_id": "u-7"}, extra_body={"service_tier": "standard_only"})
    sent = last(mock, "/messages")["body"]
    assert sent["metadata"] == {"user_id": "u-7"} and sent["service_tier"] == "standard_only"
    # A Gemini caller's safety settings reach Gemini (they were dropped), and not OpenAI.
    safety = [types.SafetySetting(category="HARM_CATEGORY_HARASSMENT", threshold="BLOCK_NONE")]
    g.models.generate_content(model="via-gemini", contents="Hi", config=types.GenerateContentConfig(safety_settings=safety))
    assert last(mock, "gemini-mock")["body"]["safetySettings"] == [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]
    g.models.generate_content(model="via-openai", contents="Hi", config=types.GenerateContentConfig(safety_settings=safety))
    sent = last(mock, "/v1/chat/completions")["body"]
    assert "safetySettings" not in sent and "safety_settings" not in sent, sent


def test_serve_settings_come_from_the_config_file_unless_a_flag_or_env_says_otherwise(cross):
    _, mock = cross
    d = tempfile.mkdtemp(prefix="parlance-settings-")
    cfg = f"{d}/gw.toml"
    with open(cfg, "w") as f:
        f.write(f"""
[serve]
body_limit = 2000
cors_origin = ["https://app.example"]

[providers.vllm]
kind = "openai"
base_url = "{mock.url}/v1"
api_key = "x"

[[models]]
name = "via-openai"
deployments = [{{ provider = "vllm", model = "vllm-mock" }}]
""")
    big = {"model": "via-openai", "messages": [{"role": "user", "content": "x" * 3000}]}
    for extra, env, limited in [((), None, True), (("--body-limit", "100000"), None, False),
                                ((), {"PARLANCE_BODY_LIMIT": "100000"}, False)]:
        s = Server("--config", cfg, "--db", "none", *extra, env=env)
        try:
            r = requests.post(s.url + "/v1/chat/completions", json=big, timeout=30)
            assert (r.status_code == 413) == limited, (extra, env, r.status_code, r.text)
            pre = requests.options(s.url + "/v1/chat/completions", timeout=30, headers={
                "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
            assert pre.headers.get("access-control-allow-origin") == "https://app.example"
        finally:
            s.stop()
    with open(f"{d}/bad.toml", "w") as f:
        f.write("[serve]\nbody_limitt = 5\n")
    out = subprocess.run([str(BIN), "serve", "--config", f"{d}/bad.toml", "--db", "none"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "body_limitt" in out.stderr, out.stderr
