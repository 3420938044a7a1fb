#!/usr/bin/env python3
"""Follow-up turns keep their KV: time to first token of a conversation's second turn
against its first, on a 2,000-token history, while 8 other conversations run.

Each round starts a fresh conversation whose first turn carries ~2,000 tokens of
history, then asks a short follow-up, two ways: the Responses API with
`previous_response_id` (the server replays the stored conversation) and chat
completions resending the whole history with GigaChat's `X-Session-ID`. Meanwhile 8
background conversations keep taking turns (their own growing histories). The
follow-up should prefill only its new tokens: the ratio second/first TTFT is what
the README quotes.

    bench/conversation.py --rounds 5
"""

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import threading
import time

import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = "bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def history_text(round_no, words=1500):
    # ~2,000 tokens of varied text: numbered facts so no two rounds share a prefix.
    return " ".join(f"Fact {round_no}.{i}: the lighthouse keeper logged ship {i * 7 % 101} at dawn." for i in range(words // 10))


def ttft_stream(url, path, body, headers=None):
    start = time.perf_counter()
    ttft, last = None, None
    with requests.post(url + path, json={**body, "stream": True}, headers=headers or {}, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ttft is None and (ev.get("type") == "response.output_text.delta" or any(c.get("delta", {}).get("content") for c in ev.get("choices", []))):
                ttft = time.perf_counter() - start
            last = ev
    return ttft, last


def background(url, stop, i):
    messages = [{"role": "system", "content": f"You are conversation {i}."}]
    while not stop.is_set():
        messages.append({"role": "user", "content": f"Tell me one more thing about topic {i}, turn {len(messages)}."})
        try:
            r = requests.post(url + "/v1/chat/completions", headers={"X-Session-ID": f"bg-{i}"}, timeout=600,
                              json={"model": MODEL, "messages": messages, "max_tokens": 48, "temperature": 0.7, "ignore_eos": True}).json()
            messages.append({"role": "assistant", "content": r["choices"][0]["message"]["content"]})
        except Exception:
            time.sleep(0.1)
        if len(messages) > 20:
            messages = messages[:1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--others", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--parlance", default=os.environ.get("PARLANCE_BIN", str(ROOT / "target" / "release" / "parlance")))
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    slots = args.others + 1
    proc = subprocess.Popen([args.parlance, "serve", "-m", args.model, "--alias", MODEL, "-np", str(slots), "-c", str(slots * 4096),
                             "-t", str(args.threads), "--port", str(port), "--db", "none"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        stop = threading.Event()
        bg = [threading.Thread(target=background, args=(url, stop, i), daemon=True) for i in range(args.others)]
        for t in bg:
            t.start()
        time.sleep(2)
        rows = {"responses": [], "chat": []}
        for n in range(args.rounds):
            hist = history_text(n)
            # Responses: the second turn names the first; the server replays it.
            first_t, first = ttft_stream(url, "/v1/responses", {"model": MODEL, "input": hist + "\n\nSummarize the log in one line.", "max_output_tokens": 16})
            resp = first["response"]
            second_t, second = ttft_stream(url, "/v1/responses", {"model": MODEL, "previous_response_id": resp["id"], "input": "Which ship came first?", "max_output_tokens": 16})
            rows["responses"].append((first_t, second_t, resp["usage"]["input_tokens"], second["response"]["usage"]["input_tokens_details"]["cached_tokens"]))
            # Chat with the session header: the caller resends the history.
            hist = history_text(n + 1000)
            msgs = [{"role": "user", "content": hist + "\n\nSummarize the log in one line."}]
            h = {"X-Session-ID": f"bench-{n}"}
            first_t, _ = ttft_stream(url, "/v1/chat/completions", {"model": MODEL, "messages": msgs, "max_tokens": 16, "stream_options": {"include_usage": True}}, h)
            whole = requests.post(url + "/v1/chat/completions", headers=h, json={"model": MODEL, "messages": msgs, "max_tokens": 16}).json()
            msgs += [{"role": "assistant", "content": whole["choices"][0]["message"]["content"]}, {"role": "user", "content": "Which ship came first?"}]
            second_t, last = ttft_stream(url, "/v1/chat/completions", {"model": MODEL, "messages": msgs, "max_tokens": 16, "stream_options": {"include_usage": True}}, h)
            rows["chat"].append((first_t, second_t, last["usage"]["prompt_tokens"], last["usage"]["prompt_tokens_details"]["cached_tokens"]))
        stop.set()
        print(f"{args.rounds} rounds, {args.others} other conversations running, {slots} slots, {args.threads} threads")
        print("| path | history tokens | first-turn TTFT p50 | second-turn TTFT p50 | ratio (p50 of per-round ratios) | second turn cached tokens p50 |")
        print("|---|---|---|---|---|---|")
        for name, r in rows.items():
            ratios = [b / a for a, b, _, _ in r]
            print(f"| {name} | {statistics.median(x[2] for x in r):.0f} | {statistics.median(x[0] for x in r) * 1000:.0f} ms | "
                  f"{statistics.median(x[1] for x in r) * 1000:.0f} ms | {statistics.median(ratios):.2f}x | {statistics.median(x[3] for x in r):.0f} |")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
