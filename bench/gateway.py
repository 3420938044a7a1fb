#!/usr/bin/env python3
"""Gateway overhead: the same load (16 concurrent clients) against a fast mock OpenAI
upstream called directly, through a bare axum + reqwest proxy (the HTTP stack's floor),
through Parlance, and through LiteLLM's proxy, side by side,
non-streaming and streaming. Two runs per target: flat out (throughput) and paced at a
fixed rate (latency); added latency = gateway percentile - direct percentile.

    python3 bench/gateway.py [--duration 10] [--rounds 3] [--connections 16] [--before BIN]

`--before BIN`: another Parlance binary (an earlier build) run beside this one, both
configurations, in the same rounds: a change's cost, measured side by side.

Needs: a release build (cargo build --release -p parlance -p parlance-upstream --examples)
and `pip install 'litellm[proxy]'`. Results go to bench/gateway-results.md.
"""

import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PARLANCE = TARGET / "release" / "parlance"
MOCK = TARGET / "release" / "examples" / "mock_openai"
# Both gateways check this key on every request (LiteLLM refuses to start without one).
KEY = "sk-" + "5e3c9a7f1b2d4e6f" * 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception as e:  # noqa: BLE001 - any answer but a refused connection will do
            if getattr(e, "code", None):
                return
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


LOADGEN = TARGET / "release" / "examples" / "loadgen"
BARE = TARGET / "release" / "examples" / "bare_proxy"


def body_file(stream: bool) -> str:
    body = json.dumps({
        "model": "mock",
        "messages": [{"role": "user", "content": "Say something short."}],
        "max_tokens": 32,
        "stream": stream,
    })
    path = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    path.write(body)
    path.close()
    return path.name


def mock_config(mock_url: str) -> str:
    """Parlance's config with one model, `mock`, on the mock upstream."""
    return (
        f'[providers.mock]\nkind = "openai"\nbase_url = "{mock_url}"\napi_key = "x"\n\n'
        '[[models]]\nname = "mock"\ndeployments = [{ provider = "mock", model = "mock" }]\n'
    )


def load(url: str, body: str, conns: int, secs: float, rate: float, reference: bool = False) -> dict:
    out = subprocess.run(
        [str(LOADGEN), url, KEY, body, str(conns), str(secs), str(rate)],
        capture_output=True, text=True, check=True,
    ).stdout
    res = json.loads(out)
    # A failure of ours ends the run; the reference proxy's (LiteLLM drops the odd
    # request under this load) is reported beside its numbers instead.
    if res["errors"] and not reference:
        raise RuntimeError(f"{url}: {res['errors']} failed requests")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rate", type=float, default=1000, help="total req/s of the paced runs")
    ap.add_argument("--before", type=pathlib.Path, help="an earlier parlance binary to run beside this one")
    ap.add_argument("--modes", default="whole,stream", help="whole, stream or both")
    args = ap.parse_args()
    if not shutil.which("litellm"):
        sys.exit("litellm not found: pip install 'litellm[proxy]'")
    for b in (PARLANCE, MOCK, LOADGEN, BARE):
        if not b.exists():
            sys.exit(f"{b} missing: see this script's docstring")

    procs = []
    logs = tempfile.mkdtemp(prefix="parlance-gw-bench-")
    def start(cmd, name, env=None):
        log = open(f"{logs}/{name}.log", "w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))

    mock_port, llm_port, bare_port = free_port(), free_port(), free_port()
    mock_url = f"http://127.0.0.1:{mock_port}/v1"
    start([str(MOCK), str(mock_port), "16"], "mock")
    start([str(BARE), f"{mock_url}/chat/completions", str(bare_port)], "bare")

    cfg = pathlib.Path(logs) / "gateway.toml"
    cfg.write_text(mock_config(mock_url))
    env = dict(os.environ, PARLANCE_LOG="error")
    # The default store (SQLite, a usage row per request), in the run's own folder; and
    # the same without a store (keyless, no metering).
    gateways = {}
    for name, binary in [("parlance", PARLANCE)] + ([("before", args.before)] if args.before else []):
        port, nodb_port = free_port(), free_port()
        start([str(binary), "serve", "--config", str(cfg), "--port", str(port), "--api-key", KEY,
               "--db", f"sqlite://{logs}/{name}.db"], name, env)
        start([str(binary), "serve", "--config", str(cfg), "--port", str(nodb_port), "--api-key", KEY,
               "--db", "none"], f"{name}-nodb", env)
        gateways[name] = f"http://127.0.0.1:{port}"
        gateways[f"{name}-nodb"] = f"http://127.0.0.1:{nodb_port}"

    llm_cfg = pathlib.Path(logs) / "litellm.yaml"
    llm_cfg.write_text(
        "model_list:\n  - model_name: mock\n    litellm_params:\n"
        f"      model: openai/mock\n      api_base: {mock_url}\n      api_key: x\n"
        "litellm_settings:\n  set_verbose: false\n  telemetry: false\n"
        f"general_settings:\n  master_key: {KEY}\n"
    )
    llm_env = dict(os.environ, LITELLM_LOG="ERROR")
    start(["litellm", "--config", str(llm_cfg), "--port", str(llm_port)], "litellm", llm_env)
    try:
        wait_http(f"http://127.0.0.1:{mock_port}/")
        wait_http(f"http://127.0.0.1:{bare_port}/")
        for url in gateways.values():
            wait_http(f"{url}/health")
        wait_http(f"http://127.0.0.1:{llm_port}/health/liveliness", timeout=180)
        targets = {
            "direct": f"{mock_url}/chat/completions",
            "floor": f"http://127.0.0.1:{bare_port}/v1/chat/completions",
            **{name: f"{url}/v1/chat/completions" for name, url in gateways.items()},
            "litellm": f"http://127.0.0.1:{llm_port}/v1/chat/completions",
        }
        results = {}
        modes = [m == "stream" for m in args.modes.split(",")]
        for stream in modes:
            body = body_file(stream)
            for url in targets.values():  # warm-up: connections, caches
                load(url, body, args.connections, 2, 0)
            for r in range(args.rounds):
                for name in round_order(list(targets), r):
                    url = targets[name]
                    for kind, rate in (("max", 0), ("paced", args.rate)):
                        res = load(url, body, args.connections, args.duration, rate, name == "litellm")
                        results.setdefault((stream, name, kind), []).append(res)
                        failed = f"  ({res['errors']} failed)" if res["errors"] else ""
                        print(f"round {r + 1} {'stream' if stream else 'whole '} {name:9} {kind:6} "
                              f"{res['rps']:9.0f} req/s  p50 {res['p50']:.3f} ms  p99 {res['p99']:.3f} ms{failed}", flush=True)
        write_report(results, args, list(targets), modes)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def round_order(names, r):
    """The targets in round `r`'s order: on odd rounds this build's two and the `--before`
    build's two swap places, so neither pair always runs first (a run of one binary in
    both places measured up to 17% apart when the order was fixed)."""
    if r % 2 == 0 or "before" not in names:
        return names
    ours = [n for n in names if n.startswith("parlance")]
    theirs = [n for n in names if n.startswith("before")]
    swapped = iter(theirs + ours)
    return [next(swapped) if n.startswith(("parlance", "before")) else n for n in names]


def med(results, key, metric):
    return statistics.median(r[metric] for r in results[key])


def write_report(results, args, names, modes) -> None:
    lines = [
        f"{args.connections} concurrent clients (loadgen), {args.duration} s per run, medians of {args.rounds} "
        f"interleaved rounds; mock OpenAI upstream answering a fixed completion (whole) or a 16-delta SSE "
        f"stream (stream). {os.cpu_count()} CPU cores shared by the load generator, the mock and the gateway."
        + (" This build's two targets and the `--before` build's swap places every other round." if args.before else ""),
        "",
        f"| mode | target | max req/s | vs floor | vs LiteLLM | p50 ms at {args.rate:.0f} req/s | p99 ms at {args.rate:.0f} req/s | added p50 ms | added p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for stream in modes:
        mode = "stream" if stream else "whole"
        d50 = med(results, (stream, "direct", "paced"), "p50")
        d99 = med(results, (stream, "direct", "paced"), "p99")
        llm = med(results, (stream, "litellm", "max"), "rps")
        floor = med(results, (stream, "floor", "max"), "rps")
        for name in names:
            rps = med(results, (stream, name, "max"), "rps")
            p50 = med(results, (stream, name, "paced"), "p50")
            p99 = med(results, (stream, name, "paced"), "p99")
            ratio = f"{rps / llm:.0f}x" if name.startswith(("parlance", "before")) else ""
            vs_floor = f"{rps / floor:.2f}x" if name not in ("direct", "floor") else ""
            added = ("", "") if name == "direct" else (f"{p50 - d50:+.3f}", f"{p99 - d99:+.3f}")
            lines.append(f"| {mode} | {name} | {rps:.0f} | {vs_floor} | {ratio} | {p50:.3f} | {p99:.3f} | {added[0]} | {added[1]} |")
    lines.append("")
    lines.append("`floor`: a bare axum + reqwest proxy (crates/upstream/examples/bare_proxy.rs) that forwards "
                 "bytes without parsing: the HTTP stack's own share of the added latency. `parlance`: the default "
                 "configuration, a usage row per request committed to SQLite before the answer's last byte; "
                 "`parlance-nodb`: `--db none` (static key, no metering). `before`, `before-nodb`: the same "
                 "two configurations of the `--before` binary.")
    lines.append(f"LiteLLM cannot sustain {args.rate:.0f} req/s here: its paced latencies include queueing.")
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "gateway-results.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
