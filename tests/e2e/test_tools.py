"""Tools, structured outputs and logprobs on local models, through the openai SDK:
Qwen2.5-Coder-0.5B-Instruct (native tool template) and SmolLM2 (no tool support)."""

import json

import jsonschema
import openai
import pytest

from conftest import KEY, MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
ASK = [{"role": "user", "content": "What's the weather in Sofia?"}]


def check_calls(calls, allowed=("get_weather", "get_time")):
    assert calls, "expected tool calls"
    for c in calls:
        assert c.id.startswith("call_") and c.type == "function"
        assert c.function.name in allowed
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def stream_calls(stream):
    """Rebuilds calls from deltas exactly as the OpenAI SDK docs do."""
    calls, content, finish = {}, "", None
    for chunk in stream:
        for c in chunk.choices:
            d = c.delta
            content += d.content or ""
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    assert slot["id"] is None, "id sent twice"
                    slot["id"] = tc.id
                    assert tc.type == "function"
                if tc.function and tc.function.name:
                    slot["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
            finish = c.finish_reason or finish
    return calls, content, finish


def test_bggpt_weather_round_trip(qwen):
    response = qwen.chat.completions.create(model="qwen", messages=ASK, tools=[WEATHER], tool_choice="auto", temperature=0)
    message = response.choices[0].message
    check_calls(message.tool_calls, ("get_weather",))
    assert response.choices[0].finish_reason == "tool_calls"
    assert "sofia" in json.loads(message.tool_calls[0].function.arguments)["city"].lower()
    tool_result = {"temperature": 22, "unit": "celsius", "condition": "sunny"}
    final = qwen.chat.completions.create(
        model="qwen",
        messages=[*ASK, message, {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": json.dumps(tool_result)}],
        tools=[WEATHER],
        temperature=0,
    )
    answer = final.choices[0].message
    assert answer.content and "22" in answer.content, answer
    assert not answer.tool_calls


def test_weather_round_trip_streaming(qwen):
    calls, content, finish = stream_calls(
        qwen.chat.completions.create(model="qwen", messages=ASK, tools=[WEATHER], temperature=0, stream=True)
    )
    assert finish == "tool_calls" and "<tool_call>" not in content and '"name"' not in content
    assert list(calls) == [0]
    call = calls[0]
    assert call["id"].startswith("call_") and call["name"] == "get_weather"
    jsonschema.validate(json.loads(call["arguments"]), SCHEMAS["get_weather"])
    followup = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [{"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"temperature": 22, "condition": "sunny"})},
    ]
    _, content, finish = stream_calls(qwen.chat.completions.create(model="qwen", messages=followup, tools=[WEATHER], temperature=0, stream=True))
    assert content.strip() and finish == "stop"


@pytest.mark.parametrize("model_fixture", ["qwen", "client"])
def test_every_tool_choice(model_fixture, request):
    client = request.getfixturevalue(model_fixture)
    model = "qwen" if model_fixture == "qwen" else MODEL
    # One call: SmolLM2 would otherwise write up to four and may hit max_tokens mid-call
    # (parallel calls are tested on Qwen below).
    r = client.chat.completions.create(
        model=model, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False, max_tokens=300, temperature=0
    )
    check_calls(r.choices[0].message.tool_calls)
    assert r.choices[0].finish_reason == "tool_calls"
    named = {"type": "function", "function": {"name": "get_time"}}
    r = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME], tool_choice=named, max_tokens=300, temperature=0)
    check_calls(r.choices[0].message.tool_calls, ("get_time",))
    r = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME], tool_choice="none", max_tokens=40)
    assert not r.choices[0].message.tool_calls and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")


def test_parallel_calls_and_single_call(qwen):
    ask = [{"role": "user", "content": "What's the weather in Sofia and what time is it in Tokyo?"}]
    r = qwen.chat.completions.create(model="qwen", messages=ask, tools=[WEATHER, TIME], tool_choice="required", max_tokens=300, temperature=0)
    check_calls(r.choices[0].message.tool_calls)
    r = qwen.chat.completions.create(
        model="qwen", messages=ask, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False, max_tokens=300
    )
    assert len(r.choices[0].message.tool_calls) == 1
    check_calls(r.choices[0].message.tool_calls)
    calls, _, finish = stream_calls(
        qwen.chat.completions.create(model="qwen", messages=ask, tools=[WEATHER, TIME], tool_choice="required", max_tokens=300, stream=True)
    )
    assert finish == "tool_calls" and calls
    for i, c in calls.items():
        jsonschema.validate(json.loads(c["arguments"]), SCHEMAS[c["name"]])


SCHEMA_CASES = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]},
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "founded": {"type": "integer", "minimum": 800, "maximum": 2100},
            "districts": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        },
        "required": ["city", "founded", "districts"],
        "additionalProperties": False,
    },
    {"type": "object", "properties": {"mood": {"enum": ["happy", "sad", "neutral"]}, "confidence": {"type": "number"}}, "required": ["mood"]},
    {
        "type": "object",
        "properties": {"person": {"type": "object", "properties": {"first": {"type": "string"}, "last": {"type": "string"}}, "required": ["first", "last"]}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
        "required": ["person", "tags"],
    },
]


# SmolLM2-135M, constrained to an unbounded integer or array, tends to write digits or items
# until max_tokens: each output is a valid prefix, but cut by length. It gets the bounded
# schemas; Qwen gets them all.
BOUNDED = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "founded": {"type": "integer", "minimum": 800, "maximum": 2100},
        "districts": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 3},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "founded", "districts", "capital"],
}
CASES = [("qwen", s) for s in SCHEMA_CASES] + [("client", BOUNDED)]


@pytest.mark.parametrize("model_fixture,schema", CASES)
def test_json_schema_output_always_validates(schema, model_fixture, request):
    client = request.getfixturevalue(model_fixture)
    model = "qwen" if model_fixture == "qwen" else MODEL
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Describe Sofia, Bulgaria as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}},
        max_tokens=300,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_json_object_mode(client, qwen):
    ask = [{"role": "user", "content": "Return a JSON object with the keys name and color of a cat."}]
    for c, model in ((qwen, "qwen"),):
        r = c.chat.completions.create(model=model, messages=ask, response_format={"type": "json_object"}, max_tokens=300, temperature=0)
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_uncompilable_schema_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}}},
        )
    assert e.value.body["param"] == "response_format.json_schema.schema"


def test_logprobs_shape_and_sums(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello in English."}], logprobs=True, top_logprobs=3, max_tokens=20, temperature=0
    )
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens or len(lp) == r.usage.completion_tokens - 1  # EOS has no entry
    assert "".join(t.token for t in lp) == r.choices[0].message.content
    for t in lp:
        assert t.logprob <= 0
        # `bytes` is the token's text as UTF-8 (a token that completes a character split
        # across tokens carries the whole character), so they always agree.
        assert bytes(t.bytes).decode("utf-8") == t.token
        assert len(t.top_logprobs) == 3
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello in English."}],
        logprobs=True,
        top_logprobs=2,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, content, entries, usage = "", "", [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            content += c.delta.content or ""
            if c.logprobs and c.logprobs.content:
                entries.extend(c.logprobs.content)
    text = "".join(t.token for t in entries)
    assert text == content == r.choices[0].message.content
    assert len(entries) in (usage.completion_tokens, usage.completion_tokens - 1)
    for t in entries:
        assert len(t.top_logprobs) == 2 and t.logprob == pytest.approx(t.top_logprobs[0].logprob)
        assert bytes(t.bytes).decode("utf-8") == t.token
    # Streamed logprobs are the whole answer's, token for token. The first request
    # prefilled its prompt fresh while these two reuse the cached prefix (a different
    # float summation order), so the stream is compared with a whole answer served from
    # the same cache state.
    again = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello in English."}], logprobs=True, top_logprobs=2, max_tokens=20, temperature=0
    ).choices[0].logprobs.content
    assert [t.token for t in entries] == [t.token for t in lp] == [t.token for t in again]
    assert [t.logprob for t in entries] == pytest.approx([t.logprob for t in again], abs=1e-4)
    assert [a.logprob for t in entries for a in t.top_logprobs] == pytest.approx([a.logprob for t in again for a in t.top_logprobs], abs=1e-4)


def test_lark_grammar_extension(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is the sky blue?"}], max_tokens=10, extra_body={"grammar": 'start: "yes" | "no"'}
    )
    assert r.choices[0].message.content in ("yes", "no")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], extra_body={"grammar": "start: ("})
    assert e.value.body["param"] == "grammar"


def test_langchain_chat_openai_reconstructs_calls(qwen):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="qwen", base_url=str(qwen.base_url), api_key="none", temperature=0, max_retries=0)
    bound = llm.bind_tools([WEATHER], tool_choice="required")
    msg = bound.invoke([HumanMessage("What's the weather in Sofia?")])
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(msg.tool_calls[0]["args"], SCHEMAS["get_weather"])
    # Streaming: LangChain merges the chunks' tool_call_chunks into whole calls.
    merged = None
    for chunk in llm.bind_tools([WEATHER]).stream([HumanMessage("What's the weather in Sofia?")]):
        merged = chunk if merged is None else merged + chunk
    assert merged.tool_calls and merged.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(merged.tool_calls[0]["args"], SCHEMAS["get_weather"])
    answer = llm.bind_tools([WEATHER]).invoke(
        [HumanMessage("What's the weather in Sofia?"), msg, ToolMessage(json.dumps({"temperature": 22}), tool_call_id=msg.tool_calls[0]["id"])]
    )
    assert answer.content and not answer.tool_calls
