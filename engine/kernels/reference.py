"""NumPy references for every kernel: plain, float64 where it helps, written for reading.

The CPU and CUDA kernels are tested against these on random data; `forward` composes them into a
whole model (dense attention per sequence), for tiny random models the tests write as GGUF files.
"""
from __future__ import annotations

import numpy as np

from ..quants import dequantize


def matmul(w: np.ndarray, ggml_type: int, x: np.ndarray) -> np.ndarray:
    """x (T, K) @ dequantize(w)^T -> (T, N)."""
    return (x.astype(np.float64) @ dequantize(w, ggml_type).astype(np.float64).T).astype(np.float32)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps) * weight).astype(np.float32)


def rope_tables(positions: np.ndarray, inv_freq: np.ndarray):
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles), np.sin(angles)


def rope(x: np.ndarray, num_heads: int, head_dim: int, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """GGML 'normal' RoPE: pairs (2i, 2i+1) of each head's first 2*len(inv_freq) dims turn by pos*inv_freq[i]."""
    cos, sin = rope_tables(positions, inv_freq)
    out = x.astype(np.float64).reshape(x.shape[0], num_heads, head_dim).copy()
    half = inv_freq.shape[0]
    a = out[:, :, 0:2 * half:2].copy()
    b = out[:, :, 1:2 * half:2].copy()
    out[:, :, 0:2 * half:2] = a * cos[:, None, :] - b * sin[:, None, :]
    out[:, :, 1:2 * half:2] = a * sin[:, None, :] + b * cos[:, None, :]
    return out.reshape(x.shape).astype(np.float32)


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    g = gate.astype(np.float64)
    sigmoid = 0.5 * (1.0 + np.tanh(0.5 * g))      # = 1 / (1 + exp(-g)), without overflow
    return (g * sigmoid * up).astype(np.float32)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, num_heads: int, num_kv_heads: int,
                     head_dim: int, q_positions: np.ndarray) -> np.ndarray:
    """Dense attention of one sequence: q (T, H*hd) at q_positions over k, v (L, KV*hd) for positions 0..L-1."""
    group = num_heads // num_kv_heads
    qh = q.astype(np.float64).reshape(q.shape[0], num_heads, head_dim)
    kh = k.astype(np.float64).reshape(k.shape[0], num_kv_heads, head_dim)
    vh = v.astype(np.float64).reshape(v.shape[0], num_kv_heads, head_dim)
    out = np.zeros_like(qh)
    for t, pos in enumerate(q_positions):
        for h in range(num_heads):
            s = kh[: pos + 1, h // group] @ qh[t, h] / np.sqrt(head_dim)
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ vh[: pos + 1, h // group]
    return out.reshape(q.shape).astype(np.float32)


def forward(model, token_ids: np.ndarray) -> np.ndarray:
    """Logits (T, vocab) of one sequence from position 0, composed from the references above.

    `model` is an engine.model.LlamaModel (only its weights and config are used).
    """
    cfg = model.config
    T = len(token_ids)
    positions = np.arange(T)
    x = dequantize(model.embedding.data, model.embedding.ggml_type)[token_ids].astype(np.float32)
    names = ("q", "k", "v", "o", "gate", "up", "down")
    for layer in range(cfg.num_layers):
        w = {n: (model.layer_weights[layer * 7 + i], model.layer_types[layer, i]) for i, n in enumerate(names)}
        h = rms_norm(x, model.layer_norms[layer, 0], cfg.rms_norm_eps)
        q = rope(matmul(*w["q"], h), cfg.num_heads, cfg.head_dim, positions, model.rope_inv_freq)
        k = rope(matmul(*w["k"], h), cfg.num_kv_heads, cfg.head_dim, positions, model.rope_inv_freq)
        v = matmul(*w["v"], h)
        attn = causal_attention(q, k, v, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, positions)
        x = x + matmul(*w["o"], attn)
        h = rms_norm(x, model.layer_norms[layer, 1], cfg.rms_norm_eps)
        x = x + matmul(*w["down"], silu_mul(matmul(*w["gate"], h), matmul(*w["up"], h)))
    h = rms_norm(x, model.output_norm, cfg.rms_norm_eps)
    return matmul(model.head.data, model.head.ggml_type, h)


# ------------------------------------------------------------------------- the BERT-family encoder

def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    c = x64 - x64.mean(axis=-1, keepdims=True)
    return (c / np.sqrt((c * c).mean(axis=-1, keepdims=True) + eps) * weight + bias).astype(np.float32)


def gelu(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + erf(x / sqrt 2)), erf from the math module."""
    import math
    erf = np.vectorize(math.erf)
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + erf(x64 / math.sqrt(2.0)))).astype(np.float32)


def bidirectional_attention(q, k, v, seq_starts, num_heads) -> np.ndarray:
    """Each packed sequence attends to all of its own tokens."""
    out = np.zeros(q.shape, np.float64)
    hd = q.shape[1] // num_heads
    for s in range(len(seq_starts) - 1):
        a, b = seq_starts[s], seq_starts[s + 1]
        for h in range(num_heads):
            cols = slice(h * hd, (h + 1) * hd)
            scores = q[a:b, cols].astype(np.float64) @ k[a:b, cols].astype(np.float64).T / np.sqrt(hd)
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            out[a:b, cols] = (p / p.sum(axis=1, keepdims=True)) @ v[a:b, cols]
    return out.astype(np.float32)


def mean_pool_normalize(x, seq_starts) -> np.ndarray:
    pooled = np.stack([x[seq_starts[s]:seq_starts[s + 1]].astype(np.float64).mean(axis=0)
                       for s in range(len(seq_starts) - 1)])
    return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)
