"""The official `gigachat` SDK, unchanged, against Parlance with a Parlance key as its
access token: chat, stream, models, token counts, its extra fields and the functions
API (on Qwen2.5-Coder)."""

import json

import pytest
from gigachat import GigaChat
from gigachat.exceptions import AuthenticationError, ResponseError
from gigachat.models import Chat, Function, FunctionParameters, Messages, MessagesRole

from conftest import KEY, MODEL


@pytest.fixture(scope="module")
def giga(server):
    with GigaChat(base_url=server.url + "/api/v1", access_token=KEY, model=MODEL, profanity_check=True, verify_ssl_certs=False, max_retries=0) as g:
        yield g


def test_chat_and_stream(giga):
    # top_p 0 keeps only the likeliest token: the whole and the streamed answer must
    # then agree (at temperature 0.01 alone two near-equal tokens could still swap).
    chat = Chat(messages=[Messages(role=MessagesRole.USER, content="Say hi.")], max_tokens=8, temperature=0.01, top_p=0.0,
                flags=["no_cache"], update_interval=0, repetition_penalty=1.0)
    r = giga.chat(chat)
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
    assert r.model == MODEL and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    text = "".join(c.choices[0].delta.content or "" for c in giga.stream(chat) if c.choices)
    assert text == r.choices[0].message.content


def test_models_and_tokens_count(giga):
    assert [m.id_ for m in giga.get_models().data] == [MODEL]
    m = giga.get_model(MODEL)
    assert m.id_ == MODEL and m.object_ == "model"
    counts = giga.tokens_count(["Привет, мир!", "Hello"], model=MODEL)
    assert len(counts) == 2 and counts[0].tokens > 0 and counts[1].characters == 5


def test_session_header_and_attachments_are_accepted(server):
    with GigaChat(base_url=server.url + "/api/v1", access_token=KEY, model=MODEL, verify_ssl_certs=False, max_retries=0) as g:
        from gigachat.context import session_id_cvar
        token = session_id_cvar.set("session-42")
        try:
            r = g.chat({"messages": [{"role": "user", "content": "Hi", "attachments": []}], "max_tokens": 4})
        finally:
            session_id_cvar.reset(token)
        assert r.choices[0].message.content is not None


def test_errors(server):
    with GigaChat(base_url=server.url + "/api/v1", access_token="wrong", model=MODEL, verify_ssl_certs=False, max_retries=0) as g:
        with pytest.raises(AuthenticationError):
            g.chat("Hi")
    with GigaChat(base_url=server.url + "/api/v1", access_token=KEY, model="GigaChat-Nope", verify_ssl_certs=False, max_retries=0) as g:
        with pytest.raises(ResponseError) as e:
            g.chat("Hi")
        assert "404" in str(e.value) or getattr(e.value, "status_code", None) == 404


def test_bad_functions_are_named_as_functions(server):
    import requests
    h = {"Authorization": f"Bearer {KEY}"}
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    r = requests.post(server.url + "/api/v1/chat/completions", headers=h, json={**ask, "functions": [{"name": "bad name!"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "functions[0].name"
    r = requests.post(server.url + "/api/v1/chat/completions", headers=h, json={**ask, "functions": [{"name": "f"}], "function_call": {"name": "g"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "function_call"
    r = requests.post(server.url + "/api/v1/chat/completions", headers=h, json={**ask, "functions": "nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "functions"


def test_functions_round_trip_on_qwen(qwen):
    url = str(qwen.base_url).rstrip("/").removesuffix("/v1") + "/api/v1"
    weather = Function(name="get_weather", description="Current weather for a city",
                       parameters=FunctionParameters(type="object", properties={"city": {"type": "string", "description": "city"}}, required=["city"]))
    with GigaChat(base_url=url, access_token="none", model="qwen", verify_ssl_certs=False, max_retries=0) as g:
        ask = [Messages(role=MessagesRole.USER, content="What is the weather in Sofia? Call the function.")]
        r = g.chat(Chat(messages=ask, functions=[weather], function_call={"name": "get_weather"}, temperature=0.01, max_tokens=128))
        call = r.choices[0].message.function_call
        assert r.choices[0].finish_reason == "function_call"
        assert call.name == "get_weather" and isinstance(call.arguments, dict) and call.arguments["city"].lower().startswith("sofia")
        streamed = [c for c in g.stream(Chat(messages=ask, functions=[weather], function_call={"name": "get_weather"}, temperature=0.01, max_tokens=128)) if c.choices]
        calls = [c.choices[0].delta.function_call for c in streamed if c.choices[0].delta.function_call]
        assert len(calls) == 1 and calls[0].arguments == call.arguments
        assert streamed[-1].choices[0].finish_reason == "function_call"
        follow = ask + [
            Messages(role=MessagesRole.ASSISTANT, content="", function_call=call),
            Messages(role=MessagesRole.FUNCTION, name="get_weather", content=json.dumps({"temperature_c": 23, "sky": "clear"})),
        ]
        answer = g.chat(Chat(messages=follow, functions=[weather], temperature=0.01, max_tokens=60))
        assert "23" in answer.choices[0].message.content
