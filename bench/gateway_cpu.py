#!/usr/bin/env python3
"""CPU time per request of this build and an earlier one under the same paced load.

Throughput on a 2-core machine shared by the load generator, the mock and the gateway
swings by up to 17% between two runs of one binary; the process's own CPU time per
request under a fixed paced load (default 3,000 req/s, below every build's maximum) is
steadier. Both builds run keyless (`--db none`) and with the default SQLite store; the
four servers take turns, in reversed order every other round.

Needs what bench/gateway.py needs.
Usage: bench/gateway_cpu.py --before path/to/old/parlance [--rounds 5] [--rate 3000]
"""

import argparse
import importlib.util
import os
import pathlib
import statistics
import subprocess
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("gateway", HERE / "gateway.py")
gw = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gw)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=pathlib.Path, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate", type=float, default=3000)
    ap.add_argument("--duration", type=int, default=4)
    args = ap.parse_args()
    logs = pathlib.Path(tempfile.mkdtemp(prefix="parlance-gw-cpu-"))
    procs = []
    mock_port = gw.free_port()
    mock_url = f"http://127.0.0.1:{mock_port}/v1"
    procs.append(subprocess.Popen([str(gw.MOCK), str(mock_port), "16"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    cfg = logs / "gateway.toml"
    cfg.write_text(gw.mock_config(mock_url))
    env = dict(os.environ, PARLANCE_LOG="error")
    servers = {}
    for build, binary in (("this", gw.PARLANCE), ("before", args.before)):
        for store, db in (("keyless", "none"), ("sqlite", f"sqlite://{logs}/{build}.db")):
            port = gw.free_port()
            p = subprocess.Popen([str(binary), "serve", "--config", str(cfg), "--port", str(port), "--api-key", gw.KEY,
                                  "--db", db], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            procs.append(p)
            servers[(store, build)] = (p, f"http://127.0.0.1:{port}/v1/chat/completions")
    try:
        gw.wait_http(f"http://127.0.0.1:{mock_port}/")
        for _, url in servers.values():
            gw.wait_http(url.replace("/v1/chat/completions", "/health"))
        per_request = {}
        for stream in (False, True):
            body = gw.body_file(stream)
            for _, url in servers.values():  # warm-up
                gw.load(url, body, 16, 1, 0)
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for key in order:
                    p, url = servers[key]
                    before = cpu_seconds(p.pid)
                    res = gw.load(url, body, 16, args.duration, args.rate)
                    used = cpu_seconds(p.pid) - before
                    per_request.setdefault((stream, *key), []).append(used / (res["rps"] * args.duration) * 1e6)
        print(f"Process CPU time per request (us) at a paced {args.rate:.0f} req/s, 16 clients, {args.duration} s "
              f"per turn, medians of {args.rounds} alternated rounds.\n")
        print("| mode | store | this build | `--before` | ratio |")
        print("|---|---|---|---|---|")
        for stream in (False, True):
            for store in ("keyless", "sqlite"):
                ours = statistics.median(per_request[(stream, store, "this")])
                theirs = statistics.median(per_request[(stream, store, "before")])
                print(f"| {'stream' if stream else 'whole'} | {store} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |")
    finally:
        for p in procs:
            p.terminate()


if __name__ == "__main__":
    main()
