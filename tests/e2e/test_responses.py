"""The OpenAI Responses door driven by the official `openai` SDK against the real
binary: whole and streamed answers, stored conversations scoped to their key,
structured output, errors; Qwen2.5-Coder for function calls."""

import json

import openai
import pytest
import requests

from conftest import KEY, MODEL, Server

ADMIN = "responses-admin-key"

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_whole_response(client):
    r = client.responses.create(model=MODEL, input="Name a color.", instructions="You are terse.", max_output_tokens=16, temperature=0)
    assert r.id.startswith("resp_") and r.object == "response" and r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output_text and r.output_text == r.output[0].content[0].text
    assert r.usage.input_tokens > 5 and 0 < r.usage.output_tokens <= 16
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "You are terse." and r.max_output_tokens == 16


def test_stream_builds_the_same_response(client):
    # The SDK's stream helper finishes on `response.completed` only (not `incomplete`),
    # so the answer must end on its own.
    kw = dict(model=MODEL, input="Say hello.", max_output_tokens=100, temperature=0, store=False)
    whole = client.responses.create(**kw)
    types = []
    text = ""
    with client.responses.stream(**kw) as s:
        for ev in s:
            types.append(ev.type)
            if ev.type == "response.output_text.delta":
                text += ev.delta
        final = s.get_final_response()
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in ("response.completed", "response.incomplete")
    for t in ("response.output_item.added", "response.content_part.added", "response.output_text.done", "response.content_part.done", "response.output_item.done"):
        assert t in types
    assert text == final.output_text == whole.output_text
    assert final.usage.output_tokens == whole.usage.output_tokens and final.status == whole.status == "completed"


def test_raw_stream_events_are_numbered_and_named(server):
    r = requests.post(server.url + "/v1/responses", headers={"Authorization": f"Bearer {KEY}"}, stream=True,
                      json={"model": MODEL, "input": "Hi", "max_output_tokens": 4, "stream": "True"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events, name = [], None
    for line in r.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            assert data["type"] == name
            events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.incomplete" and events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_stored_conversation_continues_and_can_be_read_and_deleted(client):
    first = client.responses.create(model=MODEL, input="My name is Boyan. Say hello.", max_output_tokens=12, temperature=0)
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text
    second = client.responses.create(model=MODEL, previous_response_id=first.id, input="What is my name?", max_output_tokens=12, temperature=0)
    assert second.previous_response_id == first.id
    # The history (first input and answer) is in the prompt: more input tokens than
    # the new question alone, and the local slot's prefix cache is reused.
    alone = client.responses.create(model=MODEL, input="What is my name?", max_output_tokens=12, temperature=0, store=False)
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens > 0
    items = client.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].content[0].text == "What is my name?"
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model=MODEL, previous_response_id=first.id, input="again?", max_output_tokens=4)
    assert e.value.body["param"] == "previous_response_id"


def test_store_false_is_not_kept(client):
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_structured_output(client):
    schema = {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}}, "required": ["color"], "additionalProperties": False}
    r = client.responses.create(model=MODEL, input="Pick a color.", max_output_tokens=40,
                                text={"format": {"type": "json_schema", "name": "pick", "schema": schema, "strict": True}})
    assert json.loads(r.output_text)["color"] in ("red", "green", "blue")
    assert r.text.format.type == "json_schema"


def test_errors_in_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="nope", input="x")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="x", temperature=3)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input=[{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}])
    assert e.value.body["param"] == "input[0].content[0].type"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="x", tools=[{"type": "web_search"}])
    assert e.value.body["param"] == "tools[0].type"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="word " * 40000, max_output_tokens=8)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "input"
    missing = requests.post(str(client.base_url) + "responses", headers={"Authorization": f"Bearer {KEY}"}, json={"input": "x"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
    bad = openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.responses.create(model=MODEL, input="x")


def test_conversations_belong_to_their_key():
    s = Server("--admin-key", ADMIN)
    try:
        h = {"Authorization": f"Bearer {ADMIN}"}
        a = requests.post(s.url + "/admin/keys", headers=h, json={"name": "a"}).json()["key"]
        b = requests.post(s.url + "/admin/keys", headers=h, json={"name": "b"}).json()["key"]
        ca = openai.OpenAI(base_url=s.url + "/v1", api_key=a, max_retries=0)
        cb = openai.OpenAI(base_url=s.url + "/v1", api_key=b, max_retries=0)
        r = ca.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
        assert ca.responses.retrieve(r.id).id == r.id
        with pytest.raises(openai.NotFoundError):
            cb.responses.retrieve(r.id)
        with pytest.raises(openai.NotFoundError):
            cb.responses.create(model=MODEL, previous_response_id=r.id, input="more", max_output_tokens=4)
        with pytest.raises(openai.NotFoundError):
            cb.responses.delete(r.id)
        assert ca.responses.retrieve(r.id).id == r.id
    finally:
        s.stop()


def test_function_call_round_trip_on_qwen(qwen):
    tools = [WEATHER]
    r = qwen.responses.create(model="qwen", input="What is the weather in Sofia? Use the tool.", tools=tools, tool_choice="required", temperature=0, max_output_tokens=200)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments)["city"].lower().startswith("sofia")
    assert calls[0].call_id and calls[0].id.startswith("fc_")
    follow = qwen.responses.create(model="qwen", previous_response_id=r.id, tools=tools, temperature=0, max_output_tokens=60,
                                   input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": json.dumps({"temperature_c": 23, "sky": "clear"})}])
    assert "23" in follow.output_text
    # Streamed: the call's arguments arrive as deltas and add up to the final item.
    args = ""
    with qwen.responses.stream(model="qwen", input="Weather in Varna? Use the tool.", tools=tools, tool_choice="required", temperature=0, max_output_tokens=200) as s:
        for ev in s:
            if ev.type == "response.function_call_arguments.delta":
                args += ev.delta
        final = s.get_final_response()
    call = [o for o in final.output if o.type == "function_call"][0]
    assert call.arguments == args and json.loads(args)["city"]
