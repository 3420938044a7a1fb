#!/usr/bin/env python3
"""Images on a local model, Parlance vs llama-server, same GGUF + mmproj, threads, slots
and context, one run: time to first token of an image request alone, and the
inter-token latency of 4 streams already running while 4 image requests (each a new
picture, so nothing is cached) are evaluated: their worst gap and p99 against their idle
p99. Without --mmproj, the random-weight test projector (scripts/make-test-mmproj.py)
is written for the model; its encoder is tiny, so this measures the scheduling around
an image, not a real vision encoder.

    bench/vision.py --rounds 3
"""

import argparse
import base64
import os
import pathlib
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import zlib


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench import free_port, pct, wait_healthy  # noqa: E402
from long_prompt import first_token, gaps_during  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def png(rgb, side=256):
    raw = b"".join(b"\x00" + bytes(rgb) * side for _ in range(side))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def image_ttft(url, n):
    """Seconds to the first streamed byte of content for a fresh picture number `n`."""
    rgb = (n * 37 % 256, n * 91 % 256, n * 53 % 256)
    body = {"model": "bench", "max_tokens": 4, "temperature": 0, "stream": True, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe this picture."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png(rgb)).decode()}}]}]}
    return first_token(url, body)


def under_images(url, first_image, streams=4, images=4):
    def send():
        senders = [threading.Thread(target=image_ttft, args=(url, first_image + k)) for k in range(images)]
        for s in senders:
            s.start()
        for s in senders:
            s.join()

    _, idle, busy = gaps_during(url, send, streams)
    return pct(idle, 99), pct(busy, 99), max(busy)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--mmproj", default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parlance", default=os.environ.get("PARLANCE_BIN", str(ROOT / "target" / "release" / "parlance")))
    ap.add_argument("--llama-server", default=None)
    args = ap.parse_args()
    mmproj = args.mmproj
    if mmproj is None:
        mmproj = os.path.join(tempfile.mkdtemp(prefix="parlance-bench-"), "mmproj-test.gguf")
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make-test-mmproj.py"), args.model, mmproj], check=True, capture_output=True)
    llama_bin = args.llama_server or subprocess.check_output([str(ROOT / "bench" / "build-llama-server.sh")], text=True).strip().splitlines()[-1]
    common = ["-m", args.model, "--mmproj", mmproj, "-t", str(args.threads), "-c", str(args.ctx), "-np", str(args.slots), "-fa", "on"]
    ports = {"llama-server": free_port(), "parlance": free_port()}
    cmds = {
        "llama-server": [llama_bin, *common, "-tb", str(args.threads), "--kv-unified", "--port", str(ports["llama-server"]), "--alias", "bench"],
        "parlance": [args.parlance, "serve", *common, "--port", str(ports["parlance"]), "--alias", "bench", "--db", "none"],
    }
    results = {n: {"alone": [], "idle": [], "busy": [], "worst": []} for n in cmds}
    for r in range(args.rounds):
        for name, cmd in cmds.items():
            url = f"http://127.0.0.1:{ports[name]}"
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_healthy(url, proc)
                image_ttft(url, 1000 + r)  # warm-up
                results[name]["alone"].append(image_ttft(url, r * 100 + 1))
                idle, busy, worst = under_images(url, r * 100 + 10)
                for k, v in (("idle", idle), ("busy", busy), ("worst", worst)):
                    results[name][k].append(v)
                print(f"round {r} {name}: image TTFT alone {results[name]['alone'][-1] * 1000:.0f} ms; "
                      f"4 streams' ITL p99 idle {idle * 1000:.0f} ms, during 4 images {busy * 1000:.0f} ms, worst {worst * 1000:.0f} ms", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait()
    print(f"Images ({pathlib.Path(mmproj).name}), {args.threads} threads, {args.slots} slots, context {args.ctx}, {args.rounds} rounds, medians.\n")
    print("| server | image TTFT alone | 4 streams' ITL p99 idle | during 4 image requests | worst gap |")
    print("|---|---|---|---|---|")
    med = {n: {k: statistics.median(v) for k, v in res.items()} for n, res in results.items()}
    for n, m in med.items():
        print(f"| {n} | {m['alone'] * 1000:.0f} ms | {m['idle'] * 1000:.0f} ms | {m['busy'] * 1000:.0f} ms | {m['worst'] * 1000:.0f} ms |")
    b, p = med["llama-server"], med["parlance"]
    print(f"\nparlance / llama-server: image TTFT {p['alone'] / b['alone']:.2f}x, ITL p99 during images {p['busy'] / b['busy']:.2f}x, worst gap {p['worst'] / b['worst']:.2f}x")


if __name__ == "__main__":
    main()
