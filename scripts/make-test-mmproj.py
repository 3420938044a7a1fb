#!/usr/bin/env python3
"""Writes a tiny random-weight vision projector (mmproj GGUF, Gemma 3 layout) for a
given language model, so the vision path can be tested where no vision model can be
downloaded. Together with SmolLM2 (the language model SmolVLM is built on) it is a
working vision pair: images go through llama.cpp's mtmd (preprocessing, a 2-layer ViT,
the Gemma 3 pooling and projection) into the language model's embedding space.

The weights are random (seeded), so answers describe nothing; but they do depend on
the image: two different images give different embeddings and so different greedy
answers, the same image the same ones.

Usage: scripts/make-test-mmproj.py LM.gguf OUT.gguf [--seed N] [--image-size PX]
"""
import argparse
import sys

import numpy as np
import gguf

IMAGE_SIZE = 64  # pixels per side after mtmd's resize (--image-size)
PATCH = 8  # 8x8 patches of 8x8 pixels
MERGE = 2  # Gemma 3's average pooling: (64/8/2)^2 = 16 tokens per image
N_EMBD = 64
N_FF = 96  # must differ from N_EMBD: clip.cpp guesses swapped up/down from shapes
N_HEAD = 4
N_LAYER = 2


def lm_embedding_length(path: str) -> int:
    reader = gguf.GGUFReader(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    field = reader.fields[f"{arch}.embedding_length"]
    return int(field.parts[-1][0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lm")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="a multiple of 16; (size/16)^2 tokens per image")
    args = ap.parse_args()
    size = args.image_size
    n_text = lm_embedding_length(args.lm)
    rng = np.random.default_rng(args.seed)

    def rand(*shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = gguf.GGUFWriter(args.out, "clip")
    w.add_string("general.name", "parlance-test-mmproj")
    w.add_string("general.description", "random weights, for tests only")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", "gemma3")
    w.add_uint32("clip.vision.image_size", size)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", N_EMBD)
    w.add_uint32("clip.vision.feed_forward_length", N_FF)
    w.add_uint32("clip.vision.block_count", N_LAYER)
    w.add_uint32("clip.vision.projection_dim", n_text)
    w.add_uint32("clip.vision.attention.head_count", N_HEAD)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.projector.scale_factor", MERGE)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    w.add_bool("clip.use_gelu", True)

    n_patches = (size // PATCH) ** 2
    # numpy shapes are GGUF's dimensions reversed.
    w.add_tensor("v.patch_embd.weight", rand(N_EMBD, 3, PATCH, PATCH, scale=0.2))
    w.add_tensor("v.patch_embd.bias", rand(N_EMBD, scale=0.02))
    w.add_tensor("v.position_embd.weight", rand(n_patches, N_EMBD, scale=0.02))
    for i in range(N_LAYER):
        p = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"{p}.{name}.weight", rand(N_EMBD, N_EMBD, scale=0.1))
            w.add_tensor(f"{p}.{name}.bias", rand(N_EMBD, scale=0.01))
        for name in ("ln1", "ln2"):
            w.add_tensor(f"{p}.{name}.weight", np.ones(N_EMBD, np.float32))
            w.add_tensor(f"{p}.{name}.bias", np.zeros(N_EMBD, np.float32))
        w.add_tensor(f"{p}.ffn_up.weight", rand(N_FF, N_EMBD, scale=0.1))
        w.add_tensor(f"{p}.ffn_up.bias", rand(N_FF, scale=0.01))
        w.add_tensor(f"{p}.ffn_down.weight", rand(N_EMBD, N_FF, scale=0.1))
        w.add_tensor(f"{p}.ffn_down.bias", rand(N_EMBD, scale=0.01))
    w.add_tensor("v.post_ln.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor("v.post_ln.bias", np.zeros(N_EMBD, np.float32))
    w.add_tensor("mm.soft_emb_norm.weight", np.ones(N_EMBD, np.float32))
    # Scaled so image embeddings are about as large as the text model's token
    # embeddings: large enough to steer the answer, small enough to keep it text.
    w.add_tensor("mm.input_projection.weight", rand(N_EMBD, n_text, scale=0.1 / N_EMBD**0.5))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out}: {N_LAYER}-layer ViT, {(size // PATCH // MERGE) ** 2} tokens per image, projected to {n_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
