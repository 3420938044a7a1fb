#!/usr/bin/env python3
"""Embeddings: Parlance against llama.cpp's llama-server on the same GGUF, threads and
context, side by side in one run: the vectors (cosine), throughput embedding short
sentences in requests of 32 from 4 concurrent clients, and one-input latency.

    python3 bench/embeddings.py [--sentences 2000] [--rounds 3] [--mixed]

`--mixed`: also a chat stream's inter-token latency on SmolLM2, idle, while 4
clients embed flat out on the same Parlance process, and idle again after them.

Needs: a release build of parlance, `bench/build-llama-server.sh` (llama-server), and
`scripts/fetch-models.sh minilm`. Results go to bench/embeddings-results.md.
"""

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PARLANCE = TARGET / "release" / "parlance"
GGUF = ROOT / "models" / "all-minilm-l6-v2.f16.gguf"
THREADS = str(os.cpu_count() or 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def wait(url: str) -> None:
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def sentences(n: int) -> list:
    words = "the a cat dog sea city river old new quick slow bright dark Sofia Varna mountain road book song".split()
    return [" ".join(words[(i * 7 + k * 3) % len(words)] for k in range(6 + i % 9)) + f" {i}." for i in range(n)]


def throughput(url: str, texts: list, batch: int, clients: int) -> float:
    chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for r in pool.map(lambda c: post(url, {"model": "m", "input": c}), chunks):
            assert len(r["data"]) > 0
    return len(texts) / (time.perf_counter() - t0)


def latency(url: str, texts: list) -> float:
    times = []
    for t in texts:
        t0 = time.perf_counter()
        post(url, {"model": "m", "input": t})
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def itl_p99(base: str) -> float:
    """Gaps between a greedy stream's content chunks, p99 over three streams (ms)."""
    gaps = []
    for _ in range(3):
        body = {"model": "chat", "messages": [{"role": "user", "content": "Count to a hundred."}], "max_tokens": 96,
                "ignore_eos": True, "temperature": 0, "stream": True}
        req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
        last = None
        with urllib.request.urlopen(req, timeout=300) as r:
            for line in r:
                if line.startswith(b"data: {") and b'"content":"' in line:
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append((now - last) * 1000)
                    last = now
    gaps.sort()
    return gaps[int(len(gaps) * 0.99) - 1]


def mixed(texts: list, logs: str) -> list:
    """ITL of a chat stream alone, then beside embeddings at full load, one process."""
    port = free_port()
    smol = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    p = subprocess.Popen([str(PARLANCE), "serve", "-m", str(smol), "--alias", "chat", "-m", str(GGUF), "--alias", "m",
                          "--port", str(port), "--db", "none", "-t", THREADS],
                         stdout=open(f"{logs}/mixed.log", "w"), stderr=subprocess.STDOUT, env=dict(os.environ, PARLANCE_LOG="error"))
    base = f"http://127.0.0.1:{port}"
    try:
        wait(base + "/health")
        itl_p99(base)  # warm-up
        idle = itl_p99(base)
        stop = [False]

        def hammer(_):
            while not stop[0]:
                post(base + "/v1/embeddings", {"model": "m", "input": texts[:32]})

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(hammer, i) for i in range(4)]
            time.sleep(1)
            loaded = itl_p99(base)
            stop[0] = True
            for f in futures:
                f.result()
        # Idle again, after the embedding engine has run: an engine's leftover compute
        # threads once slowed every later chat step (see the engine's `omp`).
        time.sleep(1)
        after = itl_p99(base)
        return ["", f"Chat inter-token latency p99 (SmolLM2, greedy, 96 tokens, 3 streams) on the same process: idle "
                    f"{idle:.2f} ms, while 4 clients embed flat out {loaded:.2f} ms ({loaded / idle:.2f}x), idle again "
                    f"after them {after:.2f} ms ({after / idle:.2f}x)."]
    finally:
        p.terminate()
        p.wait(timeout=10)


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mixed", action="store_true")
    args = ap.parse_args()
    llama = subprocess.run([str(ROOT / "bench" / "build-llama-server.sh")], capture_output=True, text=True, check=True).stdout.strip()
    logs = tempfile.mkdtemp(prefix="parlance-emb-bench-")
    pp, cp, fp, bp, lp = free_port(), free_port(), free_port(), free_port(), free_port()
    # The default (an F16 encoder runs from its F32 copy where that measures faster at
    # load), the copy always, the file as it is, and the BF16 copy (less precise).
    parlance = {"parlance": (pp, []), "parlance-f32": (cp, ["--f32-embeddings", "true"]),
                "parlance-f16": (fp, ["--f32-embeddings", "false"]), "parlance-bf16": (bp, ["--bf16-embeddings"])}
    procs = [
        subprocess.Popen([str(PARLANCE), "serve", "-m", str(GGUF), "--alias", "m", "--port", str(port), "--db", "none",
                          "-t", THREADS, "-b", "2048", *extra],
                         stdout=open(f"{logs}/{name}.log", "w"), stderr=subprocess.STDOUT,
                         env=dict(os.environ, PARLANCE_LOG="error,parlance_engine::config=info"))
        for name, (port, extra) in parlance.items()
    ] + [
        # 8 slots of 512 tokens: llama-server runs each input of a request as its own task.
        subprocess.Popen([llama, "-m", str(GGUF), "--embedding", "--pooling", "mean", "--port", str(lp), "-t", THREADS,
                          "-np", "8", "-c", "4096", "-b", "2048", "-ub", "2048", "--log-disable"],
                         stdout=open(f"{logs}/llama.log", "w"), stderr=subprocess.STDOUT),
    ]
    try:
        ports = {name: port for name, (port, _) in parlance.items()} | {"llama-server": lp}
        urls = {name: f"http://127.0.0.1:{port}/v1/embeddings" for name, port in ports.items()}
        for port in ports.values():
            wait(f"http://127.0.0.1:{port}/health")
        # Which weights the default chose, as its log says.
        chose = next((line.split("INFO")[-1].strip() for line in open(f"{logs}/parlance.log") if "its F32 copy" in line),
                     "no choice logged")
        texts = sentences(args.sentences)
        probe = texts[:64]
        a = post(urls["parlance"], {"model": "m", "input": probe})["data"]
        b = post(urls["llama-server"], {"model": "m", "input": probe})["data"]
        worst = {name: min(cosine(x["embedding"], y["embedding"])
                           for x, y in zip(post(urls[name], {"model": "m", "input": probe})["data"], b))
                 for name in parlance}
        res = {name: {"tput": [], "p50": []} for name in urls}
        for r in range(args.rounds):
            for name, url in urls.items():
                throughput(url, texts[:128], 32, 4)  # warm-up
                res[name]["tput"].append(throughput(url, texts, 32, 4))
                res[name]["p50"].append(latency(url, texts[:200]))
                print(f"round {r + 1} {name:12} {res[name]['tput'][-1]:8.1f} inputs/s  one-input p50 {res[name]['p50'][-1]:.2f} ms", flush=True)
        med = {n: {k: statistics.median(v) for k, v in m.items()} for n, m in res.items()}
        l = med["llama-server"]
        label = {"parlance": "Parlance (default: `--f32-embeddings auto`)", "parlance-f32": "Parlance `--f32-embeddings true`",
                 "parlance-f16": "Parlance `--f32-embeddings false`", "parlance-bf16": "Parlance `--bf16-embeddings`"}
        lines = [
            f"all-MiniLM-L6-v2 F16, {THREADS} threads, {args.sentences} short sentences in requests of 32 from 4 clients; "
            f"one-input latency over 200 sequential requests; medians of {args.rounds} interleaved rounds.",
            "",
            "| server | inputs/s | one-input p50 ms | vs llama-server | worst cosine to llama-server, 64 inputs |",
            "|---|---|---|---|---|",
        ] + [
            f"| {label[n]} | {med[n]['tput']:.0f} | {med[n]['p50']:.2f} | {med[n]['tput'] / l['tput']:.2f}x / "
            f"{med[n]['p50'] / l['p50']:.2f}x | {worst[n]:.7f} |" for n in parlance
        ] + [
            f"| llama-server | {l['tput']:.0f} | {l['p50']:.2f} | | |",
            "",
            f"The default's choice at load: {chose}",
        ]
        if args.mixed:
            for p in procs:
                p.terminate()
                p.wait(timeout=10)
            lines += mixed(texts, logs)
        text = "\n".join(lines) + "\n"
        (ROOT / "bench" / "embeddings-results.md").write_text(text)
        print()
        print(text)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


if __name__ == "__main__":
    main()
