"""The Anthropic Messages door driven by the official `anthropic` SDK against the real
binary: SmolLM2 for text, Qwen2.5-Coder for tools. (SDK 2.x has no `temperature`
argument; the door takes it, sent through `extra_body`.)"""

import anthropic
import pytest
import requests

from conftest import KEY, MODEL, Server

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def qwen_claude(qwen):
    return anthropic.Anthropic(base_url=str(qwen.base_url).rstrip("/").removesuffix("/v1"), api_key="none", max_retries=0)


def test_whole_message(claude):
    m = claude.messages.create(model=MODEL, max_tokens=16, system="You are terse.", messages=[{"role": "user", "content": "Name a color."}], extra_body={"temperature": 0})
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) > 5 and 0 < m.usage.output_tokens <= 16


def test_streamed_event_sequence_matches_the_whole_answer(claude):
    kw = dict(model=MODEL, max_tokens=12, messages=[{"role": "user", "content": "Count to five."}], extra_body={"temperature": 0})
    whole = claude.messages.create(**kw)
    names = []
    with claude.messages.stream(**kw) as s:
        for ev in s:
            names.append(ev.type)
        final = s.get_final_message()
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "content_block_start" in names and "content_block_stop" in names and "message_delta" in names
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens


def test_max_tokens_stop_reason(claude):
    m = claude.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Write a long story."}], extra_body={"ignore_eos": True})
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3


def test_errors_in_anthropics_shape(server, claude):
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="claude-nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_body={"temperature": 1.5})
    assert e.value.body["error"]["type"] == "invalid_request_error" and "temperature" in e.value.body["error"]["message"]
    bad = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "authentication_error"
    # max_tokens is required, as Anthropic has it.
    r = requests.post(server.url + "/v1/messages", headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error" and "max_tokens" in r.json()["error"]["message"]


def test_count_tokens_and_models(claude):
    n = claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Hello there, how are you?"}])
    assert 3 <= n.input_tokens <= 12
    models = claude.models.list()
    assert [m.id for m in models.data] == [MODEL] and models.data[0].type == "model"


def test_tool_use_round_trip_on_qwen(qwen_claude):
    msgs = [{"role": "user", "content": "What is the weather in Sofia? Use the tool."}]
    m = qwen_claude.messages.create(model="qwen", max_tokens=128, tools=[WEATHER], tool_choice={"type": "any"}, messages=msgs, extra_body={"temperature": 0})
    use = next(b for b in m.content if b.type == "tool_use")
    assert m.stop_reason == "tool_use" and use.name == "get_weather" and isinstance(use.input, dict) and "city" in use.input
    # Streamed: the same call arrives as a tool_use block with input_json_delta fragments.
    with qwen_claude.messages.stream(model="qwen", max_tokens=128, tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}, messages=msgs, extra_body={"temperature": 0}) as s:
        kinds = [ev.delta.type for ev in s if ev.type == "content_block_delta"]
        final = s.get_final_message()
    assert "input_json_delta" in kinds
    streamed = next(b for b in final.content if b.type == "tool_use")
    assert streamed.input == use.input
    # The result goes back as a tool_result block; the model answers in text.
    follow = msgs + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "22 degrees and sunny"}]},
    ]
    r = qwen_claude.messages.create(model="qwen", max_tokens=64, tools=[WEATHER], tool_choice={"type": "none"}, messages=follow, extra_body={"temperature": 0})
    text = "".join(b.text for b in r.content if b.type == "text")
    assert "22" in text or "sunny" in text.lower(), r.content


def test_auth_and_limit_errors_are_anthropic_shaped_too(server):
    r = requests.post(server.url + "/v1/messages", headers={"x-api-key": "wrong", "anthropic-version": "2023-06-01"},
                      json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json() == {"type": "error", "error": {"type": "authentication_error", "message": r.json()["error"]["message"]}}


def test_stream_given_as_a_string(server):
    h = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    body = {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    r = requests.post(server.url + "/v1/messages", headers=h, json={**body, "stream": "True"})
    assert r.headers["content-type"].startswith("text/event-stream") and "message_stop" in r.text
    r = requests.post(server.url + "/v1/messages", headers=h, json={**body, "stream": "maybe"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error" and "stream" in r.json()["error"]["message"]


def test_stop_sequence_is_reported(claude):
    kw = dict(model=MODEL, max_tokens=30, messages=[{"role": "user", "content": "Count from one to ten in words."}], extra_body={"temperature": 0})
    full = claude.messages.create(**kw).content[0].text
    words = full.split()
    assert len(words) > 3, full
    stop = words[2]
    m = claude.messages.create(stop_sequences=[stop, "zzzz-never"], **kw)
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert m.content[0].text == full[:full.index(stop)]
    with claude.messages.stream(stop_sequences=[stop], **kw) as s:
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop
    # Without a matched stop sequence, the answer ends its turn with none named.
    plain = claude.messages.create(**dict(kw, max_tokens=200))
    assert plain.stop_sequence is None


def test_message_start_carries_the_prompts_token_count(claude):
    # It said input_tokens: 0; Anthropic sends the real count there, before any token.
    kw = dict(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "A fresh question about turtles, please."}])
    with claude.messages.stream(**kw) as s:
        start = next(e for e in s if e.type == "message_start")
        for _ in s:
            pass
        final = s.get_final_message()
    u = final.usage
    prompt = u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
    assert start.message.usage.input_tokens == prompt > 5
