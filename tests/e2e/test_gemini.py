"""The Gemini door driven by the official `google-genai` SDK against the real binary:
SmolLM2 for text, Qwen2.5-Coder for function calls."""

import pytest
import requests
from google import genai
from google.genai import errors, types

from conftest import KEY, MODEL


@pytest.fixture(scope="module")
def gem(server):
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=server.url))


@pytest.fixture(scope="module")
def qwen_gem(qwen):
    return genai.Client(api_key="none", http_options=types.HttpOptions(base_url=str(qwen.base_url).rstrip("/").removesuffix("/v1")))


CFG = dict(max_output_tokens=12, temperature=0)


def test_generate_and_stream_agree(gem):
    r = gem.models.generate_content(model=MODEL, contents="Count to five.", config=types.GenerateContentConfig(system_instruction="Be terse.", **CFG))
    assert r.text and r.candidates[0].finish_reason in (types.FinishReason.STOP, types.FinishReason.MAX_TOKENS)
    u = r.usage_metadata
    assert u.prompt_token_count > 5 and 0 < u.candidates_token_count <= 12 and u.total_token_count == u.prompt_token_count + u.candidates_token_count
    chunks = list(gem.models.generate_content_stream(model=MODEL, contents="Count to five.", config=types.GenerateContentConfig(system_instruction="Be terse.", **CFG)))
    assert len(chunks) > 1
    assert "".join(c.text or "" for c in chunks) == r.text
    assert chunks[-1].usage_metadata.candidates_token_count == u.candidates_token_count


def test_raw_wire_forms(server):
    url = f"{server.url}/v1beta/models/{MODEL}:streamGenerateContent"
    # Greedy, so both forms carry the same answer: sampled, one answer can be an emoji
    # (three tokens, one event) and the other three words (three events).
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 3, "temperature": 0}}
    # The default stream is one JSON array; ?key= authenticates too.
    r = requests.post(url + f"?key={KEY}", json=body)
    arr = r.json()
    assert isinstance(arr, list) and arr[-1]["candidates"][0]["finishReason"] in ("STOP", "MAX_TOKENS") and "usageMetadata" in arr[-1]
    sse = requests.post(url + "?alt=sse", json=body, headers={"x-goog-api-key": KEY})
    assert sse.headers["content-type"].startswith("text/event-stream") and sse.text.count("data: ") == len(arr)


def test_count_tokens_and_models(gem):
    assert 3 <= gem.models.count_tokens(model=MODEL, contents="Hello there, how are you?").total_tokens <= 12
    names = [m.name for m in gem.models.list()]
    assert names == [f"models/{MODEL}"]
    assert gem.models.get(model=MODEL).output_token_limit > 0


def test_errors_in_geminis_shape(server, gem):
    with pytest.raises(errors.ClientError) as e:
        gem.models.generate_content(model="gemini-nope", contents="x")
    assert e.value.code == 404 and e.value.status == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as e:
        gem.models.generate_content(model=MODEL, contents="x", config=types.GenerateContentConfig(temperature=5))
    assert e.value.code == 400 and e.value.status == "INVALID_ARGUMENT" and "temperature" in e.value.message
    bad = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=server.url))
    with pytest.raises(errors.ClientError) as e:
        bad.models.generate_content(model=MODEL, contents="x")
    assert e.value.code == 401 and e.value.status == "UNAUTHENTICATED"


def test_function_calling_on_qwen(qwen_gem):
    weather = types.FunctionDeclaration(
        name="get_weather", description="Current weather for a city",
        parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")}, required=["city"]),
    )
    cfg = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[weather])],
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY")),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        temperature=0, max_output_tokens=128,
    )
    ask = [types.Content(role="user", parts=[types.Part(text="What is the weather in Sofia? Use the tool.")])]
    r = qwen_gem.models.generate_content(model="qwen", contents=ask, config=cfg)
    call = r.function_calls[0]
    assert call.name == "get_weather" and "city" in call.args
    streamed = [fc for ch in qwen_gem.models.generate_content_stream(model="qwen", contents=ask, config=cfg) for fc in (ch.function_calls or [])]
    assert streamed and streamed[0].args == call.args
    # The functionResponse goes back; with calling off, the model answers in text.
    follow = ask + [
        types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(name=call.name, args=call.args))]),
        types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(name=call.name, response={"weather": "22 degrees and sunny"}))]),
    ]
    off = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[weather])],
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="NONE")),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        temperature=0, max_output_tokens=64,
    )
    text = qwen_gem.models.generate_content(model="qwen", contents=follow, config=off).text or ""
    assert "22" in text or "sunny" in text.lower(), text


def test_snake_case_fields_from_the_sdk_are_read(qwen_gem):
    # The SDK sends `parameters_json_schema` in snake_case; it was ignored and a forced
    # call came back with args: {}.
    weather = types.FunctionDeclaration(
        name="get_weather", description="Current weather for a city",
        parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    cfg = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[weather])],
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY")),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        temperature=0, max_output_tokens=64,
    )
    r = qwen_gem.models.generate_content(model="qwen", contents="What is the weather in Sofia?", config=cfg)
    assert r.function_calls and r.function_calls[0].args.get("city"), r


def test_both_spellings_on_the_wire_and_unknown_fields_are_400(server):
    url = f"{server.url}/v1beta/models/{MODEL}:generateContent"
    auth = {"x-goog-api-key": KEY}
    camel = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 2, "temperature": 0}}
    snake = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generation_config": {"max_output_tokens": 2, "temperature": 0}}
    a = requests.post(url, json=camel, headers=auth, timeout=60).json()
    b = requests.post(url, json=snake, headers=auth, timeout=60).json()
    assert a["usageMetadata"]["candidatesTokenCount"] == b["usageMetadata"]["candidatesTokenCount"] == 2
    r = requests.post(url, json={**camel, "generationConfig": {"maxTokens": 2}}, headers=auth, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert 'Unknown name "maxTokens"' in r.json()["error"]["message"], r.text
