"""GPU offload, run by scripts/test-vulkan.sh against a `--features vulkan` build (on
Mesa's software Vulkan when there is no GPU). Skipped in the CPU suite, whose binary
has no GPU backend: there the CPU-only note is what is tested."""

import os
import pathlib
import re
import tempfile
import threading

import pytest
from openai import OpenAI

from conftest import MODEL, Server

GPU = os.environ.get("PARLANCE_GPU_TEST")
GGUF = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-135M: 30 blocks + the output layer, as llama.cpp counts offloadable layers.
LAYERS = 31


def log_of(s):
    return pathlib.Path(s.log_path).read_text()


def chat(url, model=MODEL, **kw):
    c = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}], temperature=0, max_tokens=24, **kw)


def test_cpu_build_says_ngl_has_no_effect():
    if GPU:
        pytest.skip("a GPU build")
    s = Server("-ngl", "99", "-np", "1")
    try:
        log = log_of(s)
        assert "this build has no GPU backend" in log and "on the CPU" in log, log
        assert "Paris" in chat(s.url).choices[0].message.content
    finally:
        s.stop()


@pytest.mark.skipif(not GPU, reason="needs a GPU build: scripts/test-vulkan.sh")
def test_all_layers_offloaded_answer_and_stream_concurrently():
    s = Server("-ngl", "99", "-np", "2", "-c", "4096")
    try:
        log = log_of(s)
        m = re.search(r"ready in [\d.]+s (\d+) of (\d+) layers on (\S+)", log)
        assert m and int(m.group(1)) == int(m.group(2)) == LAYERS, log
        assert GPU.lower() in m.group(3).lower(), log
        r = chat(s.url)
        assert "Paris" in r.choices[0].message.content and r.usage.completion_tokens > 0
        # Two streams batched together on the device, both ending properly.
        finishes = []

        def stream():
            c = OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=300)
            text, finish = "", None
            for chunk in c.chat.completions.create(model=MODEL, stream=True, max_tokens=16, messages=[{"role": "user", "content": "Tell me about the sea."}]):
                for ch in chunk.choices:
                    text += ch.delta.content or ""
                    finish = ch.finish_reason or finish
            finishes.append((finish, text))

        threads = [threading.Thread(target=stream) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert len(finishes) == 2 and all(f in ("stop", "length") and t for f, t in finishes), finishes
    finally:
        s.stop()


@pytest.mark.skipif(not GPU, reason="needs a GPU build: scripts/test-vulkan.sh")
def test_partial_offload_per_deployment_and_ngl_zero():
    cfg = pathlib.Path(tempfile.mkdtemp(prefix="parlance-gpu-")) / "parlance.toml"
    cfg.write_text(f'[[models]]\nname = "part"\ndeployments = [{{ gguf = "{GGUF}", n_gpu_layers = 10 }}]\n')
    s = Server("--config", str(cfg), "-m", GGUF, "-a", "cpu", "-ngl", "0", "-np", "1", "-c", "4096")
    try:
        log = log_of(s)
        # The catalog's engine is named by its file; the -m one by its alias.
        assert re.search(r"ready in [\d.]+s 10 of %d layers on " % LAYERS, log), log
        assert re.search(r"model `cpu` ready in [\d.]+s on the CPU", log), log
        assert "Paris" in chat(s.url, model="part").choices[0].message.content
        assert "Paris" in chat(s.url, model="cpu").choices[0].message.content
    finally:
        s.stop()
