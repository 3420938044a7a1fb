#!/usr/bin/env python3
"""Long prompts, Parlance vs llama-server, same GGUF, threads, slots and context, one
run: time to first token of a ~2,700-token prompt alone, and the inter-token latency of
7 streams already running while it prefills (p99 against their idle p99). Both
servers take turns round by round. Parlance runs in its default mode and, when
--deterministic is given, that mode too.

    bench/long_prompt.py --rounds 3
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time

import requests

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench import free_port, pct, wait_healthy  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def long_prompt(n):
    return " ".join(f"Entry {n}.{i}: the keeper noted vessel {i * 13 % 97} passing the northern reef." for i in range(150))


def ttft(url, prompt):
    return first_token(url, {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4, "temperature": 0, "stream": True})


def first_token(url, body):
    """Seconds until a streamed chat completion's first piece of content."""
    start = time.perf_counter()
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=900) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                ch = json.loads(line[6:])
                if any(c.get("delta", {}).get("content") for c in ch.get("choices", [])):
                    return time.perf_counter() - start
    return float("nan")


def stream_gaps(url, i, stop, gaps, lock):
    body = {"model": "bench", "messages": [{"role": "user", "content": f"Tell a long story, number {i}."}], "max_tokens": 3000,
            "temperature": 0.8, "ignore_eos": True, "stream": True}
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=900) as r:
        last = None
        for line in r.iter_lines():
            if stop.is_set():
                break
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            now = time.perf_counter()
            if last is not None:
                with lock:
                    gaps.append((now, now - last))
            last = now


def gaps_during(url, work, streams):
    """Runs `work()` while `streams` streams generate; returns its result and their
    inter-token gaps in the 3 s before it (idle) and while it ran."""
    stop, lock, gaps = threading.Event(), threading.Lock(), []
    threads = [threading.Thread(target=stream_gaps, args=(url, i, stop, gaps, lock), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    time.sleep(3)
    t0 = time.perf_counter()
    time.sleep(3)
    t1 = time.perf_counter()
    result = work()
    t2 = time.perf_counter()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    with lock:
        idle = [g for at, g in gaps if t0 <= at < t1]
        busy = [g for at, g in gaps if t1 <= at <= t2]
    return result, idle, busy


def under_load(url, prompt, streams=7):
    """ITL p99 of `streams` running streams: idle (before), and while `prompt` prefills."""
    first, idle, busy = gaps_during(url, lambda: ttft(url, prompt), streams)
    nan = float("nan")
    return first, pct(idle, 99) if idle else nan, pct(busy, 99) if busy else nan


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--deterministic", action="store_true", help="also Parlance --deterministic")
    ap.add_argument("--parlance", default=os.environ.get("PARLANCE_BIN", str(ROOT / "target" / "release" / "parlance")))
    ap.add_argument("--llama-server", default=None)
    ap.add_argument("--flash-attn", default="on", choices=["on", "off"], help="-fa for both servers")
    ap.add_argument("--parlance-args", default="", help="extra flags for Parlance, e.g. '--prefill-chunk 64'")
    ap.add_argument("--skip-llama-server", action="store_true")
    args = ap.parse_args()
    llama_bin = args.llama_server or subprocess.check_output([str(ROOT / "bench" / "build-llama-server.sh")], text=True).strip().splitlines()[-1]
    common = ["-m", args.model, "-t", str(args.threads), "-c", str(args.ctx), "-np", str(args.slots), "-fa", args.flash_attn]
    ports = {}
    cmds = {}
    ports["llama-server"] = free_port()
    cmds["llama-server"] = [llama_bin, *common, "-tb", str(args.threads), "--kv-unified", "--port", str(ports["llama-server"]), "--alias", "bench"]
    ports["parlance"] = free_port()
    cmds["parlance"] = [args.parlance, "serve", *common, *args.parlance_args.split(), "--port", str(ports["parlance"]), "--alias", "bench", "--db", "none"]
    if args.deterministic:
        ports["parlance --deterministic"] = free_port()
        cmds["parlance --deterministic"] = [*cmds["parlance"][:-6], "--port", str(ports["parlance --deterministic"]), "--alias", "bench", "--db", "none", "--deterministic"]
    if args.skip_llama_server:
        del cmds["llama-server"]
    results = {name: {"alone": [], "loaded": [], "idle": [], "busy": []} for name in cmds}
    # One server at a time (each gets the whole machine), taking turns round by round.
    for r in range(args.rounds):
        for name, cmd in cmds.items():
            url = f"http://127.0.0.1:{ports[name]}"
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_healthy(url, proc)
                ttft(url, "warm up")
                results[name]["alone"].append(ttft(url, long_prompt(r * 10 + 1)))
                first, idle, busy = under_load(url, long_prompt(r * 10 + 2))
                results[name]["loaded"].append(first)
                results[name]["idle"].append(idle)
                results[name]["busy"].append(busy)
                print(f"round {r} {name}: alone {results[name]['alone'][-1]:.2f}s, with 7 streams {first:.2f}s, ITL p99 idle {idle * 1000:.0f} ms / during prefill {busy * 1000:.0f} ms", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait()
    print(f"~2,700-token prompt (SmolLM2, {len(long_prompt(0).split())} words), {args.threads} threads, {args.slots} slots, context {args.ctx}, {args.rounds} rounds, medians.\n")
    print("| server | TTFT alone | TTFT with 7 streams | their ITL p99 idle | their ITL p99 during the prefill | ratio during/idle |")
    print("|---|---|---|---|---|---|")
    med = {n: {k: statistics.median(v) for k, v in res.items()} for n, res in results.items()}
    for n, m in med.items():
        print(f"| {n} | {m['alone']:.2f} s | {m['loaded']:.2f} s | {m['idle'] * 1000:.0f} ms | {m['busy'] * 1000:.0f} ms | {m['busy'] / m['idle']:.1f}x |")
    base = med.get("llama-server")
    for n, m in med.items() if base else []:
        if n != "llama-server":
            print(f"\n{n} / llama-server: TTFT alone {m['alone'] / base['alone']:.2f}x, with 7 streams {m['loaded'] / base['loaded']:.2f}x")


if __name__ == "__main__":
    main()
