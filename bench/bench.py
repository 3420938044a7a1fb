#!/usr/bin/env python3
"""Parlance vs llama.cpp's llama-server on the same GGUF, threads and slots, in one run.

Each round sends C concurrent streaming chat requests of 128 tokens (ignore_eos) and
measures aggregate generation throughput and time to first token. The two servers take
turns round by round, so drift in the machine's speed hits both alike.

    bench/bench.py --rounds 3            # builds llama-server on first use
"""

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import threading
import time

import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url}: not healthy after {timeout}s")


SEED = None


def one_stream(url, model, prompt, tokens, out):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0.8,
        "stream": True,
        "ignore_eos": True,
    }
    if SEED is not None:
        body["seed"] = SEED
    start = time.perf_counter()
    ttft = None
    last = None
    pieces = 0
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for c in chunk.get("choices", []):
                if c.get("delta", {}).get("content"):
                    pieces += 1
                    last = time.perf_counter() - start
                    if ttft is None:
                        ttft = last
    # Generation rate after the first token, as llama-batched-bench's S_TG leaves the
    # prompt out.
    gen = (pieces - 1) / (last - ttft) if pieces > 1 and last > ttft else float("nan")
    out.append({"ttft": ttft or float("nan"), "elapsed": time.perf_counter() - start, "pieces": pieces, "gen": gen})


def round_(url, model, clients, tokens, round_no):
    results = []
    threads = [
        threading.Thread(
            target=one_stream,
            args=(url, model, f"Write a long story about a lighthouse keeper, number {round_no}-{i}.", tokens, results),
        )
        for i in range(clients)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"tok_s": clients * tokens / wall, "gen_s": sum(r["gen"] for r in results), "ttfts": [r["ttft"] for r in results]}


def batched_bench(binary, model, threads, ctx, tokens, parallel, fa):
    """llama-batched-bench's generation rate (S_TG t/s) per parallel sequence count:
    llama.cpp's kernels decoding with no server, sampling or HTTP around them."""
    cmd = [binary, "-m", model, "-t", str(threads), "-tb", str(threads), "-c", str(ctx), "-b", "2048", "-ub", "512",
           "-npp", "32", "-ntg", str(tokens), "-npl", ",".join(map(str, parallel)), "-fa", fa, "--kv-unified"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"llama-batched-bench failed: {out.stderr[-2000:]}")
    rates = {}
    header = None
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "S_TG t/s" in cells:
            header = cells
        elif header and len(cells) == len(header) and cells[0].isdigit():
            rates[int(cells[header.index("B")])] = float(cells[header.index("S_TG t/s")])
    return rates


def rss_mb(pid):
    """Resident and peak resident memory of a process, in MB."""
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            fields[k] = int(v.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def pct(values, p):
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--parlance", default=os.environ.get("PARLANCE_BIN", str(ROOT / "target" / "release" / "parlance")))
    ap.add_argument("--llama-server", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.md"))
    ap.add_argument("--seed", type=int, default=None, help="send this seed with every request")
    ap.add_argument("--flash-attn", default="on", choices=["on", "off"], help="-fa for both servers and the ceiling")
    ap.add_argument("--no-ceiling", action="store_true", help="skip llama-batched-bench")
    ap.add_argument("--solo-repeats", type=int, default=5,
                    help="1-client rounds per round and server: one stream gives one TTFT sample")
    args = ap.parse_args()
    global SEED
    SEED = args.seed

    llama_bin = args.llama_server or subprocess.check_output([str(ROOT / "bench" / "build-llama-server.sh")], text=True).strip().splitlines()[-1]
    common = ["-m", args.model, "-t", str(args.threads), "-c", str(args.ctx)]
    lp, pp = free_port(), free_port()
    servers = {
        "llama-server": (
            f"http://127.0.0.1:{lp}",
            [llama_bin, *common, "-tb", str(args.threads), "-np", str(args.slots), "--kv-unified", "-fa", args.flash_attn, "--port", str(lp), "--alias", "bench"],
        ),
        "parlance": (
            f"http://127.0.0.1:{pp}",
            [args.parlance, "serve", *common, "-np", str(args.slots), "-fa", args.flash_attn, "--port", str(pp), "--alias", "bench"],
        ),
    }
    procs = {}
    try:
        for name, (url, cmd) in servers.items():
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_healthy(url, procs[name])
        clients = [int(c) for c in args.clients.split(",")]
        stats = {(n, c): {"tok_s": [], "gen_s": [], "ttfts": [], "round": []} for n in servers for c in clients}
        for name, (url, _) in servers.items():  # warm-up
            round_(url, "bench", 2, 16, -1)
        ceiling = {c: [] for c in clients}
        batched = str(pathlib.Path(llama_bin).with_name("llama-batched-bench"))
        for r in range(args.rounds):
            for c in clients:
                # A lone client's TTFT is one sample per stream: repeat its round, the two
                # servers taking turns, so its percentiles rest on more than a few.
                for k in range(args.solo_repeats if c == 1 else 1):
                    for name, (url, _) in servers.items():
                        res = round_(url, "bench", c, args.tokens, r * 100 + k)
                        stats[(name, c)]["tok_s"].append(res["tok_s"])
                        stats[(name, c)]["gen_s"].append(res["gen_s"])
                        stats[(name, c)]["round"].append(r)
                        stats[(name, c)]["ttfts"].extend(res["ttfts"])
                        print(f"round {r} {name:12} clients={c}: {res['tok_s']:.1f} tok/s, generating {res['gen_s']:.1f}", file=sys.stderr)
            if not args.no_ceiling:
                # Interleaved with the servers' rounds, so all three see the same machine.
                rates = batched_bench(batched, args.model, args.threads, args.ctx, args.tokens, clients, args.flash_attn)
                for c in clients:
                    ceiling[c].append(rates[c])
                print(f"round {r} llama-batched-bench: {rates}", file=sys.stderr)
        memory = {name: rss_mb(p.pid) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.terminate()
            p.wait()

    lines = [
        f"Model `{pathlib.Path(args.model).name}`, {args.threads} threads, flash attention {args.flash_attn}, {args.slots} slots, context {args.ctx}, "
        f"{args.tokens} tokens per request (ignore_eos, streaming{', seed ' + str(args.seed) if args.seed is not None else ''}), {args.rounds} rounds "
        f"(1 client: {args.solo_repeats} streams per round and server, taking turns); median of rounds for tok/s.",
        "",
        "| clients | server | aggregate tok/s | generation tok/s | TTFT p50 (s) | TTFT p99 (s) |",
        "|---|---|---|---|---|---|",
    ]
    ratios = []
    for c in clients:
        row = {}
        for name in servers:
            s = stats[(name, c)]
            row[name] = (statistics.median(s["tok_s"]), pct(s["ttfts"], 50), pct(s["ttfts"], 99), statistics.median(s["gen_s"]))
            lines.append(f"| {c} | {name} | {row[name][0]:.1f} | {row[name][3]:.1f} | {row[name][1]:.3f} | {row[name][2]:.3f} |")
        p, l = row["parlance"], row["llama-server"]
        ratios.append(f"| {c} | {p[0] / l[0]:.2f}x | {p[3] / l[3]:.2f}x | {p[1] / l[1]:.2f}x | {p[2] / l[2]:.2f}x |")
    lines += ["", "Aggregate: all tokens over the round's wall time, prompts included. Generation: each stream's tokens after its "
              "first over the time since its first, summed over the streams.", "",
              "Parlance / llama-server (throughput: higher is better; TTFT: lower is better):", "",
              "| clients | tok/s ratio | generation ratio | TTFT p50 ratio | TTFT p99 ratio |", "|---|---|---|---|---|", *ratios]
    if not args.no_ceiling:
        lines += ["", f"Against the kernels' ceiling (`llama-batched-bench` generation rate, S_TG, `-npp 32 -fa {args.flash_attn}`, "
                  "same threads and context; median and best of rounds): the servers' generation rates (medians) over it.", "",
                  "| streams | ceiling median | ceiling best | llama-server / median | Parlance / median | Parlance best / ceiling best "
                  "| llama-server / same round's ceiling (median of rounds) | Parlance / same round's ceiling (median of rounds) |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in clients:
            mid, best = statistics.median(ceiling[c]), max(ceiling[c])
            ls, ps = stats[('llama-server', c)], stats[('parlance', c)]
            lgs, pgs = ls['gen_s'], ps['gen_s']
            lg, pg = statistics.median(lgs), statistics.median(pgs)
            # The machine's speed drifts between rounds: each round against its own ceiling.
            lr = statistics.median(g / ceiling[c][r] for g, r in zip(lgs, ls['round']))
            pr = statistics.median(g / ceiling[c][r] for g, r in zip(pgs, ps['round']))
            lines.append(f"| {c} | {mid:.1f} | {best:.1f} | {lg / mid:.2f}x | {pg / mid:.2f}x | {max(pgs) / best:.2f}x | {lr:.2f}x | {pr:.2f}x |")
    lines += ["", "Memory after the run (MB; RSS now / peak):", "", "| server | RSS | peak RSS |", "|---|---|---|"]
    lines += [f"| {name} | {rss:.0f} | {peak:.0f} |" for name, (rss, peak) in memory.items()]
    lines.append(f"\nParlance peak RSS - llama-server peak RSS: {memory['parlance'][1] - memory['llama-server'][1]:+.0f} MB")
    text = "\n".join(lines) + "\n"
    pathlib.Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
