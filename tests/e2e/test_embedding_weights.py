"""Which weights an F16 encoder runs from on the CPU (the file, an F32 copy, a BF16
copy) and how its packs are decoded, checked against the file's vectors and an
independent numpy forward pass."""

import collections
import glob
import pathlib
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from conftest import Server
from test_embeddings import MINILM, SENTENCES, cos, reference, weights

# Over 64 tokens in all: packs, which run on a copy (a lone short input runs on the
# F16 file beside an F32 copy).
TEXTS = SENTENCES + ["A longer sentence about embeddings, servers and vectors, written to test them."] \
    + [f"Sentence {i} about the sea, the mountains and the city of Varna." for i in range(12)]


def test_an_f16_encoder_runs_from_an_f32_copy_with_the_same_vectors():
    """F16 encoders run on the CPU from an F32 copy in the cache (llama.cpp's F16 kernel
    is bound by conversions); the copy holds the same numbers, widened, and the
    vectors agree with the F16 run's."""
    import gguf

    cache = pathlib.Path(tempfile.mkdtemp(prefix="parlance-cache-"))
    wide = Server("-m", str(MINILM), "--alias", "minilm", "--db", "none", "--f32-embeddings", "true",
                  env={"PARLANCE_CACHE": str(cache)})
    cache_off = pathlib.Path(tempfile.mkdtemp(prefix="parlance-cache-"))
    narrow = Server("-m", str(MINILM), "--alias", "minilm", "--db", "none", "--f32-embeddings", "false",
                    env={"PARLANCE_CACHE": str(cache_off)})
    try:
        copies = list((cache / "f32").glob("*.f32.gguf"))
        assert len(copies) == 1, copies
        assert not (cache_off / "f32").exists()
        src, dst = gguf.GGUFReader(str(MINILM)), gguf.GGUFReader(str(copies[0]))
        want = {t.name: t for t in src.tensors}
        assert sorted(want) == sorted(t.name for t in dst.tensors)
        widened = 0
        for t in dst.tensors:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
            s = want[t.name]
            assert list(t.shape) == list(s.shape), t.name
            assert np.array_equal(np.asarray(t.data, dtype=np.float32).ravel(), np.asarray(s.data).astype(np.float32).ravel()), t.name
            widened += s.tensor_type == gguf.GGMLQuantizationType.F16
        assert widened > 30
        assert [f.name for f in dst.fields.values()][:5] == [f.name for f in src.fields.values()][:5]
        texts = TEXTS
        a = requests.post(wide.url + "/v1/embeddings", json={"model": "minilm", "input": texts}, timeout=60).json()["data"]
        b = requests.post(narrow.url + "/v1/embeddings", json={"model": "minilm", "input": texts}, timeout=60).json()["data"]
        for x, y in zip(a, b):
            assert cos(x["embedding"], y["embedding"]) >= 0.99999
        w = weights()
        for text, x in zip(texts, a):
            ids = requests.post(wide.url + "/tokenize", json={"content": text, "model": "minilm"}, timeout=10).json()["tokens"]
            assert cos(x["embedding"], reference(w, ids)) >= 0.9999
        # A second start reuses the copy.
        mtime = copies[0].stat().st_mtime_ns
        again = Server("-m", str(MINILM), "--alias", "minilm", "--db", "none", "--f32-embeddings", "true",
                       env={"PARLANCE_CACHE": str(cache)})
        again.stop()
        assert copies[0].stat().st_mtime_ns == mtime and len(list((cache / "f32").iterdir())) == 1
    finally:
        wide.stop()
        narrow.stop()


def engine_threads(proc):
    """How many threads of the process carry each embedding engine's name."""
    names = collections.Counter(pathlib.Path(t, "comm").read_text().strip() for t in glob.glob(f"/proc/{proc.pid}/task/*"))
    return {n: k for n, k in names.items() if n.startswith("emb")}


def test_packs_decode_side_by_side_one_thread_each_with_the_same_vectors():
    """On the CPU an embedding engine with N threads decodes up to N packs at once, one
    thread each (its own and N - 1 lanes), when enough inputs wait; each input's vector
    is still what it is alone, in order. By default the F32 copy serves only where it
    measures faster than the file at load, and the log says which won and by how much."""
    cache = pathlib.Path(tempfile.mkdtemp(prefix="parlance-cache-"))
    s = Server("-m", str(MINILM), "--alias", "minilm", "--db", "none", "-t", "3", env={"PARLANCE_CACHE": str(cache)})
    try:
        # The engine thread and two lanes, named alike (the chat engines' priority
        # switches find them by name); no compute thread has started yet.
        assert list(engine_threads(s.proc).values()) == [3], engine_threads(s.proc)
        log = s.log_path.read_text()
        decided = [line for line in log.splitlines() if "its F32 copy" in line]
        assert len(decided) == 1 and "copy_ms=" in decided[0] and "file_ms=" in decided[0], log
        assert ("runs as it is" in decided[0]) != ("runs from its F32 copy" in decided[0]), decided
        assert len(list((cache / "f32").glob("*.f32.gguf"))) == 1

        def embed(chunk):
            r = requests.post(s.url + "/v1/embeddings", json={"model": "minilm", "input": chunk}, timeout=120)
            assert r.status_code == 200, r.text
            return [e["embedding"] for e in r.json()["data"]]

        texts = [f"Sentence {i} about " + " ".join(["the sea"] * (i % 13)) for i in range(160)]
        with ThreadPoolExecutor(4) as pool:
            chunks = list(pool.map(embed, [texts[i:i + 40] for i in range(0, 160, 40)]))
        together = [v for chunk in chunks for v in chunk]
        assert len(together) == 160
        for text, v in zip(texts, together):
            assert cos(embed([text])[0], v) >= 0.99999, text
    finally:
        s.stop()


def to_bf16(a):
    """F32 values rounded to BF16 (to nearest, ties to even), as bit patterns."""
    u = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def test_bf16_embeddings_run_from_a_bf16_copy_rounded_to_nearest():
    """`--bf16-embeddings`: the F16 weights rounded to BF16 in a cached copy, which
    serves every decode (no F32 copy, no timing at load); vectors stay close to the F16
    run's and to the reference, but are not the F16 run's."""
    import gguf

    cache = pathlib.Path(tempfile.mkdtemp(prefix="parlance-cache-"))
    bf = Server("-m", str(MINILM), "--alias", "minilm", "--db", "none", "--bf16-embeddings", env={"PARLANCE_CACHE": str(cache)})
    file = Server("-m", str(MINILM), "--alias", "minilm", "--db", "none", "--f32-embeddings", "false",
                  env={"PARLANCE_CACHE": str(cache)})
    try:
        assert [p.name.rsplit("-", 2)[0] for p in (cache / "f32").iterdir()] == [MINILM.stem], list((cache / "f32").iterdir())
        copy = next((cache / "f32").glob("*.bf16.gguf"))
        log = bf.log_path.read_text()
        assert "runs from its BF16 copy" in log and "its F32 copy" not in log, log
        src, dst = gguf.GGUFReader(str(MINILM)), gguf.GGUFReader(str(copy))
        want = {t.name: t for t in src.tensors}
        assert sorted(want) == sorted(t.name for t in dst.tensors)
        rounded = 0
        for t in dst.tensors:
            s = want[t.name]
            assert list(t.shape) == list(s.shape), t.name
            if s.tensor_type == gguf.GGMLQuantizationType.F16:
                assert t.tensor_type == gguf.GGMLQuantizationType.BF16, t.name
                expect = to_bf16(np.asarray(s.data).astype(np.float32).ravel())
                assert np.array_equal(np.asarray(t.data).view(np.uint16).ravel(), expect), t.name
                rounded += 1
            else:
                assert t.tensor_type == s.tensor_type and np.array_equal(np.asarray(t.data), np.asarray(s.data)), t.name
        assert rounded > 30
        texts = TEXTS
        a = requests.post(bf.url + "/v1/embeddings", json={"model": "minilm", "input": texts}, timeout=60).json()["data"]
        b = requests.post(file.url + "/v1/embeddings", json={"model": "minilm", "input": texts}, timeout=60).json()["data"]
        lone = requests.post(bf.url + "/v1/embeddings", json={"model": "minilm", "input": texts[0]}, timeout=60).json()["data"]
        close = [cos(x["embedding"], y["embedding"]) for x, y in zip(a, b)]
        assert min(close) >= 0.9999, close
        # The F32 copy and the file agree to 0.9999998: these are BF16's numbers.
        assert min(close) < 0.999999, close
        assert cos(lone[0]["embedding"], a[0]["embedding"]) >= 0.99999
        w = weights()
        for text, x in zip(texts, a):
            ids = requests.post(bf.url + "/tokenize", json={"content": text, "model": "minilm"}, timeout=10).json()["tokens"]
            assert cos(x["embedding"], reference(w, ids)) >= 0.9999
    finally:
        bf.stop()
        file.stop()
