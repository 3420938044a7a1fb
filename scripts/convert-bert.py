#!/usr/bin/env python3
"""A BERT encoder (sentence-transformers layout: config.json, model.safetensors,
vocab.txt) as a GGUF that llama.cpp serves as an embedding model, written with the
`gguf` package alone: llama.cpp's convert_hf_to_gguf.py imports torch, which these
machines cannot run. Tensor names come from gguf's own tables, the vocabulary in
llama.cpp's WordPiece ("bert") form.

    python3 scripts/convert-bert.py MODEL_DIR OUT.gguf [--type f16|f32] [--rank-head SEED]

`--rank-head SEED`: add a seeded random one-output classification head on the pooler
and pool by `rank`: a synthetic reranker (its scores mean nothing) for tests.
"""

import argparse
import json
import pathlib
import struct

import gguf
import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}


def read_safetensors(path: pathlib.Path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        buf = raw[base + start:base + end]
        if meta["dtype"] == "BF16":
            a = np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16
            arr = a.view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=DTYPES[meta["dtype"]])
        out[name] = arr.reshape(meta["shape"]).astype(np.float32)
    return out


def phantom(tok: str) -> str:
    """llama.cpp's WordPiece vocabulary marks word starts, not continuations."""
    if tok.startswith("[") and tok.endswith("]"):
        return tok
    if tok.startswith("##"):
        return tok[2:]
    return "\u2581" + tok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--type", choices=["f16", "f32"], default="f16")
    ap.add_argument("--rank-head", type=int, default=None)
    args = ap.parse_args()

    cfg = json.loads((args.model_dir / "config.json").read_text())
    tensors = read_safetensors(args.model_dir / "model.safetensors")
    n_layer = cfg["num_hidden_layers"]
    arch = gguf.MODEL_ARCH.BERT
    names = gguf.get_tensor_name_map(arch, n_layer)

    w = gguf.GGUFWriter(str(args.out), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(args.model_dir.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(n_layer)
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_causal_attention(False)
    rank = args.rank_head is not None
    w.add_pooling_type(gguf.PoolingType.RANK if rank else gguf.PoolingType.MEAN)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if args.type == "f16" else gguf.LlamaFileType.ALL_F32)

    vocab = (args.model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([phantom(t) for t in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in vocab])
    w.add_token_type_count(cfg.get("type_vocab_size", 2))
    ids = {t: i for i, t in enumerate(vocab)}
    w.add_bos_token_id(ids["[CLS]"])
    w.add_sep_token_id(ids["[SEP]"])
    w.add_unk_token_id(ids["[UNK]"])
    w.add_pad_token_id(ids["[PAD]"])
    w.add_mask_token_id(ids["[MASK]"])
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)

    if rank:
        rng = np.random.default_rng(args.rank_head)
        hidden = cfg["hidden_size"]
        tensors["classifier.weight"] = (rng.standard_normal((1, hidden)) * 0.05).astype(np.float32)
        tensors["classifier.bias"] = np.zeros((1,), dtype=np.float32)
        w.add_classifier_output_labels(["score"])

    for hf_name, data in tensors.items():
        if hf_name.endswith("position_ids") or (hf_name.startswith("pooler.") and not rank):
            continue
        # A cross-encoder's head as llama.cpp's rank pooling reads it: the pooler
        # (dense + tanh) as `cls`, the one-output classifier as `cls.output`.
        head = {"pooler.dense": "cls", "classifier": "cls.output"}
        stem, _, suffix = hf_name.removeprefix("bert.").rpartition(".")
        name = (f"{head[stem]}.{suffix}" if stem in head
                else names.get_name(hf_name.removeprefix("bert."), try_suffixes=(".weight", ".bias")))
        if name is None:
            raise SystemExit(f"no GGUF name for tensor {hf_name}")
        # Norms, biases and the token-type table (added as a view, which F16 cannot
        # be) stay F32, as llama.cpp's converter keeps them.
        if args.type == "f16" and data.ndim > 1 and name != "token_types.weight":
            data = data.astype(np.float16)
        w.add_tensor(name, data)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
