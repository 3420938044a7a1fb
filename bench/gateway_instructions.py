#!/usr/bin/env python3
"""Instructions per proxied request, counted by valgrind's callgrind: the gateway's own
user-space work, without the timing noise of a 2-vCPU machine shared by the load
generator and the mock (throughput there moves +-10% between rounds; these counts move
~0.5%). Each binary serves the mock of bench/gateway.py at 200 req/s from 4 clients;
counting starts after a warm-up and covers N requests.

    python3 bench/gateway_instructions.py [--mode whole|stream] [--db none|sqlite] [-n 400] BIN...

BIN: parlance binaries, or `floor` for the bare proxy. valgrind knows no AVX-512, so
build them for a baseline CPU, the gateway alone (no llama.cpp: minutes, not ten):

    RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR=target-vg \\
        cargo build --release -p parlance --no-default-features
    RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR=target-vg \\
        cargo build --release -p parlance-upstream --example bare_proxy

The mock and the load generator are bench/gateway.py's (CARGO_TARGET_DIR's release
examples); `floor` is target-vg's bare_proxy (`--floor PATH` to name another).
`callgrind_annotate` on the kept output files (printed) shows where the instructions go.
"""

import argparse
import glob
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import gateway as gw  # noqa: E402


def count(cmd, url, health, body, n, out):
    """Starts `cmd` under callgrind, loads it, returns (requests, instructions)."""
    p = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, PARLANCE_LOG="error"),
    )
    try:
        gw.wait_http(health, timeout=300)
        gw.load(url, body, 4, 3, 100)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, check=True)
        res = gw.load(url, body, 4, n / 200, 200)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, check=True)
        time.sleep(1)
    finally:
        p.terminate()
        p.wait()
    total = 0
    # The dump holds the counts since the reset; the file written at exit is left out.
    for f in glob.glob(f"{out}.*"):
        for line in open(f):
            if line.startswith("summary:"):
                total += int(line.split()[1])
                break
    return res["rps"] * n / 200, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["whole", "stream"], default="whole")
    ap.add_argument("--db", choices=["none", "sqlite"], default="none")
    ap.add_argument("-n", type=int, default=400, help="requests counted per binary")
    ap.add_argument("--floor", default="target-vg/release/examples/bare_proxy")
    ap.add_argument("bins", nargs="+")
    args = ap.parse_args()
    logs = pathlib.Path(tempfile.mkdtemp(prefix="parlance-instr-"))
    mock_port = gw.free_port()
    mock_url = f"http://127.0.0.1:{mock_port}/v1"
    mock = subprocess.Popen([str(gw.MOCK), str(mock_port), "16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = logs / "gateway.toml"
    cfg.write_text(gw.mock_config(mock_url))
    body = gw.body_file(args.mode == "stream")
    try:
        gw.wait_http(f"http://127.0.0.1:{mock_port}/")
        for i, b in enumerate(args.bins):
            port = gw.free_port()
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            if b == "floor":
                cmd, health = [args.floor, f"{mock_url}/chat/completions", str(port)], f"http://127.0.0.1:{port}/"
            else:
                db = f"sqlite://{logs}/p{i}.db" if args.db == "sqlite" else "none"
                cmd = [b, "serve", "--config", str(cfg), "--port", str(port),
                       "--api-key", gw.KEY, "--db", db]
                health = f"http://127.0.0.1:{port}/health"
            out = logs / f"callgrind.{i}"
            n, total = count(cmd, url, health, body, args.n, out)
            print(f"{b}: {args.mode}, db {args.db}: {total / n / 1e3:.1f}k instructions per request "
                  f"({n:.0f} requests; {out}.*)", flush=True)
    finally:
        mock.terminate()


if __name__ == "__main__":
    main()
