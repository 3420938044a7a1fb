"""Legacy completions (`client.completions`) on the local model: raw prompts, no chat
template; several prompts and choices, echo, logprobs, streaming, errors."""

import openai
import pytest
import requests

from conftest import KEY, MODEL


def test_whole_completion_continues_the_raw_prompt(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert len(r.choices) == 1 and r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
    # No chat template: the prompt is the tokens of the text alone (plus BOS).
    tokens = requests.post(client.base_url.__str__().removesuffix("/v1/") + "/tokenize", headers={"Authorization": f"Bearer {KEY}"},
                           json={"content": "The capital of France is"}).json()["tokens"]
    assert r.usage.prompt_tokens == len(tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_default_max_tokens_is_16(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"


def test_prompts_and_choices_are_numbered_in_order(client):
    r = client.completions.create(model=MODEL, prompt=["1, 2, 3,", "a, b, c,"], n=2, max_tokens=4, temperature=0, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    # temperature 0: both choices of one prompt agree; the two prompts differ.
    assert r.choices[0].text == r.choices[1].text and r.choices[2].text == r.choices[3].text
    assert r.choices[0].text != r.choices[2].text
    one = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=4, temperature=0)
    two = client.completions.create(model=MODEL, prompt="a, b, c,", max_tokens=4, temperature=0)
    assert one.choices[0].text == r.choices[0].text and two.choices[0].text == r.choices[2].text
    # Each prompt is prefilled once for its n choices, and usage sums the prompts.
    assert r.usage.prompt_tokens == one.usage.prompt_tokens + two.usage.prompt_tokens


def test_echo_logprobs_and_token_prompts(client, server):
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0, echo=True)
    assert r.choices[0].text.startswith("Hello") and len(r.choices[0].text) > len("Hello")
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == r.usage.completion_tokens
    assert "".join(lp.tokens) == r.choices[0].text and all(len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0
    toks = requests.post(server.url + "/tokenize", headers={"Authorization": f"Bearer {KEY}"}, json={"content": "Hello", "add_special": False}).json()["tokens"]
    t = client.completions.create(model=MODEL, prompt=toks, max_tokens=3, temperature=0)
    assert t.choices[0].text == r.choices[0].text


def test_stream_matches_whole(client):
    kw = dict(model=MODEL, prompt="The quick brown fox", max_tokens=8, temperature=0)
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", logprobs=9)
    assert e.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt={"not": "a prompt"})
    assert e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", suffix="y")
    assert e.value.body["param"] == "suffix"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="word " * 40000, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=[10**9], max_tokens=4)
    assert e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=[[1, 2]] * 17, max_tokens=4)
    assert e.value.body["param"] == "prompt" and "at most 16" in e.value.body["message"]
