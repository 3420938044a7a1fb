"""The official `ollama` Python client, unchanged, against Parlance's Ollama door with a
Parlance key in its headers: chat and generate whole and streamed, structured output,
a tool round trip on Qwen, embeddings, tags/show/ps/version, and errors in Ollama's
shape."""

import json

import jsonschema
import ollama
import pytest
import requests

from conftest import KEY, MODEL, ROOT, Server
from test_tools import ASK, WEATHER


@pytest.fixture(scope="module")
def oc(server):
    return ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"})


def test_chat_whole_and_streamed(oc):
    msgs = [{"role": "user", "content": "Say hi."}]
    opts = {"temperature": 0, "seed": 3, "num_predict": 12}
    r = oc.chat(model=MODEL, messages=msgs, options=opts)
    assert r.message.role == "assistant" and r.message.content
    assert r.done and r.done_reason in ("stop", "length") and r.model == MODEL
    assert r.prompt_eval_count > 5 and 0 < r.eval_count <= 12
    assert r.total_duration >= r.prompt_eval_duration > 0 and r.eval_duration >= 0
    parts = list(oc.chat(model=MODEL, messages=msgs, options=opts, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == r.message.content
    assert parts[-1].eval_count == r.eval_count
    # num_predict -1 is Ollama's "no limit": the server's cap applies.
    r = oc.chat(model=MODEL, messages=msgs, options={"temperature": 0, "num_predict": -1})
    assert r.done and r.eval_count > 0


def test_generate_and_raw(oc):
    r = oc.generate(model=MODEL, prompt="The capital of France is", system="Answer briefly.", options={"num_predict": 8, "temperature": 0})
    assert r.response and r.done and r.eval_count <= 8
    text = "".join(p.response for p in oc.generate(model=MODEL, prompt="1, 2, 3,", raw=True, stream=True, options={"num_predict": 6, "temperature": 0}))
    assert text


def test_format_json_schema_is_enforced(oc):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = oc.chat(model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], format=schema, options={"num_predict": 100, "temperature": 0})
    assert r.done_reason == "stop", r.message.content
    jsonschema.validate(json.loads(r.message.content), schema)


def test_tool_round_trip_on_qwen(qwen):
    """The BgGPT weather round trip of test_tools, through Ollama's message shapes:
    arguments as objects, the tool's answer named by the tool, not by a call id."""
    host = str(qwen.base_url).rstrip("/").removesuffix("/v1")
    c = ollama.Client(host=host)
    msgs = list(ASK)
    r = c.chat(model="qwen", messages=msgs, tools=[WEATHER], options={"temperature": 0})
    call = r.message.tool_calls[0]
    assert call.function.name == "get_weather" and "sofia" in call.function.arguments["city"].lower()
    result = {"temperature": 22, "unit": "celsius", "condition": "sunny"}
    msgs += [r.message, {"role": "tool", "content": json.dumps(result), "tool_name": "get_weather"}]
    r = c.chat(model="qwen", messages=msgs, tools=[WEATHER], options={"temperature": 0})
    assert "22" in r.message.content and not r.message.tool_calls


def test_tags_show_ps_version(oc):
    assert [m.model for m in oc.list().models] == [MODEL]
    s = oc.show(MODEL)
    assert "completion" in s.capabilities
    # model_info and details come from the GGUF itself.
    assert s.modelinfo["general.architecture"] == "llama" and s.modelinfo["llama.context_length"] == 8192
    assert s.modelinfo["llama.block_count"] == 30 and "tokenizer.ggml.tokens" not in s.modelinfo
    assert s.details.family == "llama" and s.details.quantization_level == "Q4_1"
    assert s.details.parameter_size.endswith("M")
    assert "<|im_start|>" in s.template
    assert [m.model for m in oc.ps().models] == [MODEL]
    v = requests.get(str(oc._client.base_url.join("/api/version")), headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert v.json()["version"]


def test_embed_on_an_embedding_model():
    s = Server("-m", str(ROOT / "models" / "all-minilm-l6-v2.f16.gguf"), "--alias", "minilm")
    try:
        c = ollama.Client(host=s.url)
        r = c.embed(model="minilm", input=["Hello world", "Sofia"])
        assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 384 and r.prompt_eval_count > 4
        old = c.embeddings(model="minilm", prompt="Hello world")
        assert max(abs(a - b) for a, b in zip(old.embedding, r.embeddings[0])) < 1e-5
        # Ollama cuts a long input to the context unless told not to.
        assert len(c.embed(model="minilm", input="word " * 2000).embeddings[0]) == 384
        with pytest.raises(ollama.ResponseError) as e:
            c.embed(model="minilm", input="word " * 2000, truncate=False)
        assert e.value.status_code == 400 and "512" in e.value.error
    finally:
        s.stop()


def test_errors_in_ollamas_shape(server, oc):
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=server.url).chat(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 401
    r = requests.post(server.url + "/api/chat", json={"model": MODEL, "messages": []}, timeout=10)
    assert r.status_code == 401 and set(r.json()) == {"error"}
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404 and "no-such-model" in e.value.error
    r = requests.post(server.url + "/api/chat", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "options": {"temperature": 9}}, timeout=10)
    assert r.status_code == 400 and set(r.json()) == {"error"} and "temperature" in r.json()["error"]
