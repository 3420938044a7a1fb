"""The OpenAI SDK against a real Parlance with the real default model."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from conftest import KEY, MODEL, Server

BG_QUESTION = "Кога е основан Софийският университет?"


def stream_text(stream):
    text, finishes, usage, chunks = {}, {}, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                text[c.index] = text.get(c.index, "") + c.delta.content
            if c.finish_reason is not None:
                assert c.index not in finishes, "two finish reasons for one choice"
                finishes[c.index] = c.finish_reason
    return text, finishes, usage, chunks


def test_bggpt_quickstart_as_documented(client):
    response = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": BG_QUESTION},
        ],
        max_tokens=16384,
        temperature=0.2,
    )
    choice = response.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert response.id.startswith("chatcmpl-")
    assert response.model == MODEL
    assert response.system_fingerprint
    u = response.usage
    assert u.prompt_tokens > 10 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_bggpt_streaming_as_documented(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": BG_QUESTION}],
        max_tokens=1024,
        stream=True,
    )
    text, finishes, usage, _ = stream_text(stream)
    assert text[0].strip()
    assert finishes == {0: finishes[0]} and finishes[0] in ("stop", "length")
    assert usage is None  # not asked for


def test_streaming_equals_non_streaming_and_cyrillic_is_never_split(client):
    messages = [{"role": "user", "content": "Преведи на английски: Добро утро, как си днес? Отговори на български също."}]
    args = dict(model=MODEL, messages=messages, max_tokens=60, temperature=0, seed=1)
    whole = client.chat.completions.create(**args).choices[0].message.content
    deltas = []
    for chunk in client.chat.completions.create(stream=True, **args):
        for c in chunk.choices:
            if c.delta.content:
                deltas.append(c.delta.content)
    # Deltas hold whole characters only: joined, they are exactly the whole answer
    # (a split character would surface as U+FFFD in the stream but not in `whole`).
    assert "".join(deltas) == whole


def test_other_seed_examples(client):
    # GigaChat: multi-turn history; new-api: "Good evening"; BelugAPI: system + user.
    r = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "When will the AI take over the world?"},
            {"role": "assistant", "content": "So far, this has not been an inevitable menace."},
            {"role": "user", "content": "Do you think we have a chance?"},
        ],
        temperature=0.7,
        max_tokens=32,
    )
    assert r.choices[0].message.content
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Good evening"}], max_tokens=1688, temperature=0.5, stream=False
    )
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.refusal is None
    r = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Explain quantum entanglement in 3 sentences."},
        ],
        max_tokens=256,
        temperature=0.7,
    )
    assert r.choices[0].message.content


def test_n_choices_non_streaming_and_streaming(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a color."}], n=3, max_tokens=12, seed=7
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content is not None and c.finish_reason for c in r.choices)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a color."}],
        n=2,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finishes, usage, _ = stream_text(stream)
    assert set(finishes) == {0, 1}
    assert usage.completion_tokens >= 2


def test_n_larger_than_slots(client):
    # 6 choices over 4 slots: split into two jobs, merged into one answer.
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=6, max_tokens=4, extra_body={"ignore_eos": True}
    )
    assert len(r.choices) == 6
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 24


def test_max_tokens_and_ignore_eos(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=3, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 3


def test_stop_strings_end_generation_and_are_not_emitted(client):
    args = dict(model=MODEL, messages=[{"role": "user", "content": "Count from 1 to 20, separated by commas."}], temperature=0, max_tokens=80)
    full = client.chat.completions.create(**args).choices[0].message.content
    assert len(full) > 12, full
    stop = full[6:9]
    first = full.index(stop)
    r = client.chat.completions.create(stop=[stop, "zzzz-never"], **args)
    assert r.choices[0].message.content == full[:first]
    assert r.choices[0].finish_reason == "stop"
    text, finishes, _, _ = stream_text(client.chat.completions.create(stop=stop, stream=True, **args))
    assert text.get(0, "") == full[:first] and finishes[0] == "stop"


def test_seed_gives_the_same_text_alone_and_again(client):
    args = dict(model=MODEL, messages=[{"role": "user", "content": "Write a short poem about the sea."}], temperature=1.0, max_tokens=40, seed=1234)
    alone = client.chat.completions.create(**args).choices[0].message.content
    assert client.chat.completions.create(**args).choices[0].message.content == alone
    different = client.chat.completions.create(**dict(args, seed=4321)).choices[0].message.content
    assert different != alone


def test_seed_gives_the_same_text_under_concurrency():
    # A fresh server (see the README on KV-cell order after heavy churn), in the mode
    # that makes numerics independent of what shares the batch.
    server = Server("-np", "4", "--deterministic")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        args = dict(model=MODEL, messages=[{"role": "user", "content": "Write a short poem about the sea."}], temperature=1.0, max_tokens=40, seed=1234)
        alone = client.chat.completions.create(**args).choices[0].message.content
        other = dict(args, seed=99, messages=[{"role": "user", "content": "Tell me about mountains."}])
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client.chat.completions.create, **(args if i % 2 == 0 else other)) for i in range(4)]
            results = [f.result().choices[0].message.content for f in futures]
        assert results[0] == alone and results[2] == alone
    finally:
        server.stop()


def test_eight_concurrent_streams(client):
    def one(i):
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Tell me fact number {i} about Bulgaria."}],
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        return stream_text(stream)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for text, finishes, usage, _ in results:
        assert finishes == {0: "length"}
        assert usage.completion_tokens == 32
        assert text[0]


def test_client_disconnect_frees_its_slot(server, client):
    # Fill all 4 slots with long generations, read a little, hang up.
    def start_and_leave(i):
        r = requests.post(
            server.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": MODEL, "messages": [{"role": "user", "content": f"Story {i}"}], "max_tokens": 3000, "stream": True, "ignore_eos": True},
            stream=True,
            timeout=30,
        )
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        r.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(start_and_leave, range(4)))
    started = time.time()
    r = requests.post(
        server.url + "/v1/chat/completions?debug=true",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    # Had the four 3000-token generations kept their slots, this would queue for minutes.
    assert r.json()["debug"]["timings"]["queue_ms"] < 5000
    assert time.time() - started < 10


def test_errors_are_openai_errors(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=3)
    assert e.value.body["param"] == "temperature" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=40000)
    assert e.value.body["code"] == "max_tokens_too_large" and e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello " * 17000}], max_tokens=16000)
    assert e.value.body["code"] == "context_length_exceeded"
    assert "maximum context length" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    headers = {"Authorization": f"Bearer {KEY}"}
    r = requests.post(server.url + "/v1/chat/completions", headers=headers, data="{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = requests.post(server.url + "/v1/chat/completions", headers=headers, json={"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    r = requests.post(server.url + "/v1/chat/completions", headers=headers, json={"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"
    assert requests.get(server.url + "/health").status_code == 200  # open without a key


def test_models_endpoints(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert MODEL in ids
    m = client.models.retrieve(MODEL)
    assert m.owned_by and m.created
    # SmolLM2's training context (8192) would leave no room for this server's
    # --max-output-tokens 16384: that plus 1024 for the prompt.
    assert m.model_extra["context_length"] == 16384 + 1024


def test_nextgpt_debug_and_api_prefix(server):
    r = requests.post(
        server.url + "/api/v1/chat/completions?debug=True",
        headers={"Authorization": f"Bearer {KEY}"},
        data=json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8}),
    )
    assert r.status_code == 200, r.text
    d = r.json()["debug"]
    assert "<|im_start|>user\nWhat is the capital of France?" in d["prompt"]
    assert set(d["timings"]) >= {"queue_ms", "prefill_ms", "decode_ms", "decode_tokens_per_second"}
    assert isinstance(d["slots"], list)


def test_queue_full_is_429_with_retry_after(tiny_server):
    def one(_):
        return requests.post(
            tiny_server.url + "/v1/chat/completions",
            json={"model": "tiny-a", "messages": [{"role": "user", "content": "Go"}], "max_tokens": 150, "ignore_eos": True},
            timeout=120,
        )

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(one, range(6)))
    codes = sorted(r.status_code for r in responses)
    # One slot and --queue 1: one runs, one waits, the other four are refused.
    assert codes == [200, 200, 429, 429, 429, 429], codes
    for r in responses:
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "1"
            assert r.json()["error"]["code"] == "queue_full"
        else:
            assert r.status_code == 200
            assert r.json()["usage"]["completion_tokens"] == 150


def test_several_models_are_listed_and_chosen_by_name(tiny_server):
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="none", max_retries=0)
    assert sorted(m.id for m in client.models.list().data) == ["tiny-a", "tiny-b"]
    for name in ("tiny-a", "tiny-b"):
        r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert r.model == name and r.choices[0].finish_reason in ("stop", "length")
    assert client.models.retrieve("tiny-b").model_extra["context_length"] == 2048


def test_gigachat_tokens_count(server):
    text = "And the silken, sad, uncertain rustling of each purple curtain"
    r = requests.post(server.url + "/api/v1/tokens/count", headers={"Authorization": f"Bearer {KEY}"}, json={"model": MODEL, "input": [text, "Кога е основан Софийският университет?"]})
    assert r.status_code == 200, r.text
    counts = r.json()
    assert [c["object"] for c in counts] == ["tokens", "tokens"]
    assert counts[0]["characters"] == len(text) and 5 < counts[0]["tokens"] < len(text)
    assert counts[1]["tokens"] > counts[1]["characters"] // 4


def test_llama_server_tokenize_and_detokenize(server):
    h = {"Authorization": f"Bearer {KEY}"}
    text = "Hello, Sofia! Здравей."
    toks = requests.post(server.url + "/tokenize", json={"content": text, "add_special": False}, headers=h).json()["tokens"]
    assert toks and all(isinstance(t, int) for t in toks)
    assert requests.post(server.url + "/detokenize", json={"tokens": toks}, headers=h).json()["content"] == text
    pieces = requests.post(server.url + "/tokenize", json={"content": text, "add_special": False, "with_pieces": True}, headers=h).json()["tokens"]
    assert [p["id"] for p in pieces] == toks
    bad = requests.post(server.url + "/detokenize", json={"tokens": [10**9]}, headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert requests.post(server.url + "/tokenize", json={"content": "x", "model": "nope"}, headers=h).status_code == 404
