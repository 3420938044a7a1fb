#!/usr/bin/env python3
"""Tenancy overhead: the gateway benchmark's load (16 clients on a fast mock OpenAI
upstream) through Parlance three ways, interleaved in one run: a static key with no
store (the keyless baseline), a stored key under RPM/TPM limits with metering into
SQLite, and the same into Postgres with the limit counters in Redis. The limits are set
high enough that nothing is refused: what is measured is the cost of checking them and
writing a usage row per request.

    python3 bench/tenancy.py [--duration 8] [--rounds 3] [--connections 16] [--rate 1000]

Needs: cargo build --release -p parlance -p parlance-upstream --examples; PostgreSQL
and redis-server (scripts/setup.sh --test). Results go to bench/tenancy-results.md.
"""

import argparse
import glob
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request

from gateway import KEY, LOADGEN, MOCK, PARLANCE, ROOT, body_file, free_port, load, wait_http

ADMIN = "bench-admin-key"


def start_postgres(d):
    pg = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    shutil.chown(d, "postgres", "postgres")
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_pg + [f"{pg}/initdb", "-D", f"{d}/data", "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    subprocess.run(as_pg + [f"{pg}/pg_ctl", "-D", f"{d}/data", "-l", f"{d}/log", "-w", "-o",
                            f"-p {port} -k {d} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    return f"postgres://postgres@127.0.0.1:{port}/postgres", lambda: subprocess.run(
        as_pg + [f"{pg}/pg_ctl", "-D", f"{d}/data", "-m", "immediate", "stop"], capture_output=True)


def stored_key(port):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/keys",
        data=json.dumps({"name": "bench", "rpm": 10_000_000, "tpm": 2_000_000_000}).encode(),
        headers={"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )
    return json.load(urllib.request.urlopen(req))["key"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rate", type=float, default=1000)
    args = ap.parse_args()
    for b in (PARLANCE, MOCK, LOADGEN):
        if not b.exists():
            raise SystemExit(f"{b} missing: see this script's docstring")
    tmp = tempfile.mkdtemp(prefix="parlance-tenancy-bench-")
    procs, stops = [], []

    def start(cmd, name):
        log = open(f"{tmp}/{name}.log", "w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ, PARLANCE_LOG="error")))

    mock_port = free_port()
    mock_url = f"http://127.0.0.1:{mock_port}/v1"
    start([str(MOCK), str(mock_port), "16"], "mock")
    cfg = pathlib.Path(tmp) / "gateway.toml"
    cfg.write_text(f'[providers.mock]\nkind = "openai"\nbase_url = "{mock_url}"\napi_key = "x"\n\n'
                   '[[models]]\nname = "mock"\ndeployments = [{ provider = "mock", model = "mock" }]\n')
    pg_dir = tempfile.mkdtemp(prefix="parlance-bench-pg-")
    pg_url, stop_pg = start_postgres(pg_dir)
    stops.append(stop_pg)
    redis_port = free_port()
    start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], "redis")
    ports = {"keyless": free_port(), "sqlite": free_port(), "pg+redis": free_port()}
    base = [str(PARLANCE), "serve", "--config", str(cfg)]
    start(base + ["--port", str(ports["keyless"]), "--db", "none", "--api-key", KEY], "keyless")
    start(base + ["--port", str(ports["sqlite"]), "--db", f"sqlite://{tmp}/p.db", "--admin-key", ADMIN], "sqlite")
    start(base + ["--port", str(ports["pg+redis"]), "--db", pg_url, "--redis", f"redis://127.0.0.1:{redis_port}", "--admin-key", ADMIN], "pg")
    try:
        wait_http(f"http://127.0.0.1:{mock_port}/")
        for p in ports.values():
            wait_http(f"http://127.0.0.1:{p}/health")
        keys = {"keyless": KEY, "sqlite": stored_key(ports["sqlite"]), "pg+redis": stored_key(ports["pg+redis"])}
        results = {}
        for stream in (False, True):
            body = body_file(stream)
            for name, port in ports.items():
                load_with(keys[name], f"http://127.0.0.1:{port}/v1/chat/completions", body, args.connections, 2, 0)
            for r in range(args.rounds):
                for name, port in ports.items():
                    for kind, rate in (("max", 0), ("paced", args.rate)):
                        res = load_with(keys[name], f"http://127.0.0.1:{port}/v1/chat/completions", body, args.connections, args.duration, rate)
                        results.setdefault((stream, name, kind), []).append(res)
                        print(f"round {r + 1} {'stream' if stream else 'whole '} {name:9} {kind:6} {res['rps']:9.0f} req/s  "
                              f"p50 {res['p50']:.3f} ms  p99 {res['p99']:.3f} ms", flush=True)
        report(results, args)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for s in stops:
            s()


def load_with(key, url, body, conns, secs, rate):
    out = subprocess.run([str(LOADGEN), url, key, body, str(conns), str(secs), str(rate)], capture_output=True, text=True, check=True).stdout
    res = json.loads(out)
    if res["errors"]:
        raise RuntimeError(f"{url}: {res['errors']} failed requests")
    return res


def report(results, args):
    med = lambda k, m: statistics.median(r[m] for r in results[k])
    lines = [
        f"{args.connections} clients (loadgen) on a mock OpenAI upstream, {args.duration} s per run, medians of {args.rounds} "
        f"interleaved rounds, {os.cpu_count()} CPU cores shared by everything (load generator, mock, Parlance, Postgres, Redis).",
        "",
        f"| mode | setup | max req/s | vs keyless | p50 ms at {args.rate:.0f} req/s | added p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for stream in (False, True):
        mode = "stream" if stream else "whole"
        base_rps = med((stream, "keyless", "max"), "rps")
        base_p50 = med((stream, "keyless", "paced"), "p50")
        for name in ("keyless", "sqlite", "pg+redis"):
            rps, p50, p99 = med((stream, name, "max"), "rps"), med((stream, name, "paced"), "p50"), med((stream, name, "paced"), "p99")
            rel = "" if name == "keyless" else f"{rps / base_rps:.2f}x"
            added = "" if name == "keyless" else f"{p50 - base_p50:+.3f}"
            lines.append(f"| {mode} | {name} | {rps:.0f} | {rel} | {p50:.3f} | {added} | {p99:.3f} |")
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "tenancy-results.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
