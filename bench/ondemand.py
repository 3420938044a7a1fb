#!/usr/bin/env python3
"""Models on demand (`--models-dir`) against llama.cpp's llama-server, side by side in
one run, same GGUF, threads, context and slots:

- cold start: Parlance already running with the model unloaded, request to first
  streamed token; llama-server: process start to its first streamed token (start,
  wait for /health, the same request);
- warm: time to first token of a loaded model through the lifecycle machinery
  (`--models-dir`) against the same model given with `-m` (alternating requests);
- memory: RSS before the first load and after each of N load/unload cycles
  (`keep_alive: 0`).

    python3 bench/ondemand.py [--model models/gemma-3-270m-q4_k_m.gguf] [--rounds 5] [--cycles 20]

Needs: a release build of parlance and `bench/build-llama-server.sh`. Results go to
bench/ondemand-results.md.
"""

import argparse
import json
import os
import pathlib
import re
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PARLANCE = TARGET / "release" / "parlance"
THREADS = str(os.cpu_count() or 2)
CTX, SLOTS = "4096", "2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, proc=None) -> None:
    for _ in range(3000):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.01)
    raise RuntimeError(f"{url} did not come up")


def first_token(base: str, model: str, keep_alive=None, text="Say hi.") -> float:
    """Seconds from sending a streamed chat request to its first content chunk; the
    rest of the answer is read to its end."""
    body = {"model": model, "stream": True, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": text}]}
    path = "/v1/chat/completions"
    if keep_alive is not None:
        # Ollama's door: the only one that carries keep_alive.
        body = {"model": model, "messages": body["messages"], "keep_alive": keep_alive,
                "options": {"num_predict": 8, "temperature": 0}}
        path = "/api/chat"
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    first = None
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            # The first chunk with text (not the role-only opener).
            if first is None and re.search(rb'"content":\s*"(?!")', line):
                first = time.perf_counter() - t0
    return first if first is not None else time.perf_counter() - t0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def loaded(base: str, model: str) -> bool:
    with urllib.request.urlopen(base + "/api/ps", timeout=10) as r:
        return any(m["name"] == model for m in json.loads(r.read())["models"])


def until_unloaded(base: str, model: str) -> None:
    for _ in range(500):
        if not loaded(base, model):
            time.sleep(0.5)  # the engine thread frees the weights just after
            return
        time.sleep(0.02)
    raise RuntimeError(f"{model} stayed loaded")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=20)
    args = ap.parse_args()
    gguf = pathlib.Path(args.model).resolve()
    name = gguf.name[:-5]
    llama = subprocess.run([str(ROOT / "bench" / "build-llama-server.sh")], capture_output=True,
                           text=True, check=True).stdout.strip().splitlines()[-1]
    d = tempfile.mkdtemp(prefix="parlance-ondemand-")
    os.symlink(gguf, f"{d}/{gguf.name}")
    common = ["-t", THREADS, "-c", CTX, "-np", SLOTS]
    pp, mp = free_port(), free_port()
    lazy = subprocess.Popen([str(PARLANCE), "serve", "--models-dir", d, "--port", str(pp), "--db", "none", *common],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    eager = subprocess.Popen([str(PARLANCE), "serve", "-m", str(gguf), "--alias", "eager", "--port", str(mp),
                              "--db", "none", *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pbase, mbase = f"http://127.0.0.1:{pp}", f"http://127.0.0.1:{mp}"
    try:
        wait(pbase + "/health", lazy)
        wait(mbase + "/health", eager)
        rss_before = rss_mb(lazy.pid)
        cold_p, cold_l = [], []
        for _ in range(args.rounds):
            # Drop the page cache's advantage from neither side: both read a file the
            # other just read, so both start warm in the page cache.
            cold_p.append(first_token(pbase, name, keep_alive=0))
            until_unloaded(pbase, name)
            lp = free_port()
            t0 = time.perf_counter()
            srv = subprocess.Popen([llama, "-m", str(gguf), "--port", str(lp), "-fa", "on", *common],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait(f"http://127.0.0.1:{lp}/health", srv)
                first_token(f"http://127.0.0.1:{lp}", name)
                cold_l.append(time.perf_counter() - t0)
            finally:
                srv.terminate()
                srv.wait()
        warm_p, warm_m = [], []
        first_token(pbase, name, keep_alive="10m")
        for i in range(args.rounds * 4):
            # A new prompt each time: a real prefill, not the last answer's saved logits.
            text = f"Question {i}: name a colour and a number between {i} and {i + 7}."
            warm_p.append(first_token(pbase, name, text=text))
            warm_m.append(first_token(mbase, "eager", text=text))
        first_token(pbase, name, keep_alive=0)
        until_unloaded(pbase, name)
        after = []
        for _ in range(args.cycles):
            first_token(pbase, name, keep_alive=0)
            until_unloaded(pbase, name)
            after.append(rss_mb(lazy.pid))
    finally:
        for p in (lazy, eager):
            p.terminate()
            p.wait()
    med = statistics.median
    lines = [
        f"{gguf.name}, {THREADS} threads, context {CTX}, {SLOTS} slots, {args.rounds} rounds; "
        f"{os.cpu_count()} CPU cores; the file is in the page cache for both.",
        "",
        "| measure | Parlance | llama-server / `-m` | ratio |",
        "|---|---|---|---|",
        f"| cold: request to first token (Parlance, model unloaded) vs process start to first token (llama-server), median s "
        f"| {med(cold_p):.3f} | {med(cold_l):.3f} | {med(cold_p) / med(cold_l):.2f}x |",
        f"| warm TTFT (a new prompt each request), `--models-dir` vs `-m`, median ms | {med(warm_p) * 1000:.1f} | {med(warm_m) * 1000:.1f} "
        f"| {med(warm_p) / med(warm_m):.2f}x |",
        "",
        f"RSS before the first load {rss_before:.1f} MB; after each of {args.cycles} load/unload cycles: "
        f"first {after[0]:.1f}, last {after[-1]:.1f}, max {max(after):.1f} MB "
        f"(last - before: {after[-1] - rss_before:+.1f} MB).",
    ]
    out = "\n".join(lines) + "\n"
    print(out)
    (ROOT / "bench" / "ondemand-results.md").write_text(out)


if __name__ == "__main__":
    main()
