"""Random data in GGML blocks, and tiny random Llama models written as real GGUF files.

Types gguf-py can quantize (GGUF_QUANTIZED) are gguf.quants.quantize of random weights. The others
are random bytes except the f16 scale fields, which get small finite values, so every weight is a
finite number of realistic size (gguf-py has no K-quant quantizer); the reference dequantizers
then say what the weights are.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from engine.quants import QUANT_TYPES, quant_type

# byte offsets of the f16 scale fields inside one block
_SCALE_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q4_K": (0, 2),
                 "Q5_K": (0, 2), "Q6_K": (208,), "Q3_K": (108,), "Q2_K": (80, 82)}
_WITH_MIN = {"Q4_1": 16, "Q5_1": 32}           # w = d*q + m, q in 0..levels-1
GGUF_QUANTIZED = ("Q5_0", "Q5_1", "BF16")


def random_blocks(ggml_type: int, rows: int, cols: int, rng: np.random.Generator, scale: float = 0.05) -> np.ndarray:
    """(rows, row_bytes) uint8: a random matrix in the given GGML type."""
    qt = quant_type(ggml_type)
    if qt.name == "F32":
        return (rng.standard_normal((rows, cols)) * scale * 4).astype(np.float32).view(np.uint8)
    if qt.name == "F16":
        return (rng.standard_normal((rows, cols)) * scale * 4).astype(np.float16).view(np.uint8)
    if qt.name in GGUF_QUANTIZED:             # spread like the random-byte types' weights
        weights = (rng.standard_normal((rows, cols)) * scale * 2).astype(np.float32)
        return gguf.quants.quantize(weights, gguf.GGMLQuantizationType(ggml_type))
    return random_block_bytes(ggml_type, rows, cols, rng, scale)


def random_block_bytes(ggml_type: int, rows: int, cols: int, rng: np.random.Generator,
                       scale: float = 0.05) -> np.ndarray:
    """(rows, row_bytes) uint8 of random bytes but for sane f16 scales: every bit pattern of the
    quantized values occurs, which a quantizer's output need not contain."""
    qt = quant_type(ggml_type)
    data = rng.integers(0, 256, (rows, qt.row_bytes(cols)), dtype=np.uint8)
    blocks = data.reshape(-1, qt.type_size)
    for offset in _SCALE_FIELDS.get(qt.name, ()):      # BF16: every bit pattern, NaNs too
        values = rng.uniform(-scale, scale, (blocks.shape[0], 1)).astype(np.float16)
        if offset == 0 and qt.name not in _WITH_MIN:
            values = np.abs(values)
        blocks[:, offset:offset + 2] = values.view(np.uint8)
    if qt.name in _WITH_MIN:                      # w = d*q + m: centre the weights around 0
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        blocks[:, 0:2] = np.abs(d).astype(np.float16).view(np.uint8)
        blocks[:, 2:4] = (-(_WITH_MIN[qt.name] - 1) / 2 * np.abs(d)).astype(np.float16).view(np.uint8)
    return data


def type_id(name: str) -> int:
    return next(t for t, qt in QUANT_TYPES.items() if qt.name == name)


def write_tiny_llama(path: Path, *, matrix_type: str = "Q4_1", embedding_type: str = "Q8_0",
                     vocab: int = 96, hidden: int = 256, ffn: int = 512, layers: int = 2, heads: int = 4,
                     kv_heads: int = 2, seed: int = 0, tied: bool = True, context: int = 256,
                     architecture: str = "llama", head_dim: int | None = None, sliding_window: int = 0,
                     rope_base: float = 10000.0, experts: int = 0, experts_used: int = 2) -> Path:
    """A random GGUF with a byte-level vocabulary (token i = character chr(32+i)), in the tensor
    layout of `architecture`: "llama", "qwen2" (+ Q/K/V biases) or "gemma3" (+ Q/K norms, post
    norms, sliding_window on five layers of six). experts > 0: a Mixtral-style MoE ("llama" with
    an F32 router and `experts` experts of width ffn in place of each FFN, top experts_used)."""
    rng = np.random.default_rng(seed)
    head_dim = head_dim or hidden // heads
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name(f"tiny-random-{architecture}")
    if head_dim != hidden // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if sliding_window:
        w.add_sliding_window(sliding_window)
    w.add_block_count(layers)
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(experts_used)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens = [chr(33 + i) if 33 + i < 127 else f"<t{i}>" for i in range(vocab)]
    tokens[0] = "<|endoftext|>"
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (vocab - 1))
    w.add_token_merges([])
    w.add_eos_token_id(0)

    def matrix(name, rows, cols, type_name):
        t = type_id(type_name)
        data = random_blocks(t, rows, cols, rng)
        if type_name in ("F32", "F16"):
            w.add_tensor(name, data.view(np.float32 if type_name == "F32" else np.float16).reshape(rows, cols))
        else:   # raw bytes (rows, row_bytes); gguf-py derives the element shape from the type
            w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType(t))

    def expert_matrices(name, rows, cols):
        """experts matrices (rows, cols) stacked as llama.cpp's 3-D {cols, rows, experts}."""
        t = type_id(matrix_type)
        data = random_blocks(t, experts * rows, cols, rng)
        if matrix_type in ("F32", "F16"):
            dtype = np.float32 if matrix_type == "F32" else np.float16
            w.add_tensor(name, data.view(dtype).reshape(experts, rows, cols))
        else:
            w.add_tensor(name, data.reshape(experts, rows, -1), raw_dtype=gguf.GGMLQuantizationType(t))

    def vector(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    matrix("token_embd.weight", vocab, hidden, embedding_type)
    vector("output_norm.weight", hidden)
    if not tied:
        matrix("output.weight", vocab, hidden, embedding_type)
    for i in range(layers):
        vector(f"blk.{i}.attn_norm.weight", hidden)
        vector(f"blk.{i}.ffn_norm.weight", hidden)
        matrix(f"blk.{i}.attn_q.weight", heads * head_dim, hidden, matrix_type)
        matrix(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden, matrix_type)
        matrix(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden, matrix_type)
        matrix(f"blk.{i}.attn_output.weight", hidden, heads * head_dim, matrix_type)
        if experts:
            matrix(f"blk.{i}.ffn_gate_inp.weight", experts, hidden, "F32")
            expert_matrices(f"blk.{i}.ffn_gate_exps.weight", ffn, hidden)
            expert_matrices(f"blk.{i}.ffn_up_exps.weight", ffn, hidden)
            expert_matrices(f"blk.{i}.ffn_down_exps.weight", hidden, ffn)
        else:
            matrix(f"blk.{i}.ffn_gate.weight", ffn, hidden, matrix_type)
            matrix(f"blk.{i}.ffn_up.weight", ffn, hidden, matrix_type)
            matrix(f"blk.{i}.ffn_down.weight", hidden, ffn, matrix_type)
        if architecture == "qwen2":
            for name, n in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
                w.add_tensor(f"blk.{i}.attn_{name}.bias", (0.5 * rng.standard_normal(n * head_dim)).astype(np.float32))
        if architecture == "gemma3":
            vector(f"blk.{i}.attn_q_norm.weight", head_dim)
            vector(f"blk.{i}.attn_k_norm.weight", head_dim)
            vector(f"blk.{i}.post_attention_norm.weight", hidden)
            vector(f"blk.{i}.post_ffw_norm.weight", hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
