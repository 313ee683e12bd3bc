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


def rope_neox(x: np.ndarray, num_heads: int, head_dim: int, positions: np.ndarray,
              inv_freq: np.ndarray) -> np.ndarray:
    """NEOX RoPE (transformers' rotate_half): dims i and i + half of each head turn by pos*inv_freq[i]."""
    cos, sin = rope_tables(positions, inv_freq)
    out = x.astype(np.float64).reshape(x.shape[0], num_heads, head_dim).copy()
    half = inv_freq.shape[0]
    a = out[:, :, :half].copy()
    b = out[:, :, half:2 * half].copy()
    out[:, :, :half] = a * cos[:, None, :] - b * sin[:, None, :]
    out[:, :, half:2 * half] = a * sin[:, None, :] + b * cos[:, None, :]
    return out.reshape(x.shape).astype(np.float32)


def head_rms_norm(x: np.ndarray, num_heads: int, head_dim: int, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over each head of x (T, num_heads*head_dim)."""
    return rms_norm(x.reshape(x.shape[0], num_heads, head_dim), weight, eps).reshape(x.shape)


def gelu_tanh_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    g = gate.astype(np.float64)
    return (0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3))) * up).astype(np.float32)


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    g = gate.astype(np.float64)
    sigmoid = 0.5 * (1.0 + np.tanh(0.5 * g))      # = 1 / (1 + exp(-g)), without overflow
    return (g * sigmoid * up).astype(np.float32)


def route(logits: np.ndarray, k: int, normalize: bool, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """MoE routing of logits (T, E): expert ids (T, k) of the k largest softmax probabilities
    (descending; ties: the lower id) and their weights (T, k), renormalised to sum to 1 when
    normalize, times scale."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ids = np.argsort(-z, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(p, ids, axis=1)
    if normalize:
        w /= w.sum(axis=1, keepdims=True)
    return ids.astype(np.int32), (w * scale).astype(np.float32)


def moe_ffn(h: np.ndarray, router, gate_exps, up_exps, down_exps, k: int, normalize: bool, scale: float = 1.0,
            act=None) -> np.ndarray:
    """Token by token: sum over its k experts of weight * down_e(act(gate_e h) * up_e h).
    router, *_exps: (data, ggml_type); the experts stacked as in kernels/cpu/moe.py."""
    act = act or silu_mul
    E = router[0].shape[0]
    F, D = gate_exps[0].shape[0] // E, h.shape[1]
    ids, weights = route(matmul(*router, h), k, normalize, scale)
    out = np.zeros(h.shape, np.float64)
    for t in range(h.shape[0]):
        x = h[t:t + 1]
        for e, w in zip(ids[t], weights[t], strict=True):
            g = matmul(gate_exps[0][e * F:(e + 1) * F], gate_exps[1], x)
            u = matmul(up_exps[0][e * F:(e + 1) * F], up_exps[1], x)
            out[t] += w * matmul(down_exps[0][e * D:(e + 1) * D], down_exps[1], act(g, u))[0]
    return out.astype(np.float32)


def shared_expert(h: np.ndarray, gate, up, down, gate_inp, act=None) -> np.ndarray:
    """sigmoid(h . gate_inp) * down(act(gate h) * up h) (Qwen2-MoE's shared expert)."""
    act = act or silu_mul
    f = matmul(*down, act(matmul(*gate, h), matmul(*up, h))).astype(np.float64)
    g = 1.0 / (1.0 + np.exp(-matmul(*gate_inp, h).astype(np.float64)))
    return (g * f).astype(np.float32)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, num_heads: int, num_kv_heads: int,
                     head_dim: int, q_positions: np.ndarray, scale: float | None = None,
                     window: int = 0) -> np.ndarray:
    """Dense attention of one sequence: q (T, H*hd) at q_positions over k, v (L, KV*hd) for positions 0..L-1.
    scale defaults to 1/sqrt(head_dim); window > 0: a query at p sees keys p-window+1..p only."""
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    group = num_heads // num_kv_heads
    qh = q.astype(np.float64).reshape(q.shape[0], num_heads, head_dim)
    kh = k.astype(np.float64).reshape(k.shape[0], num_kv_heads, head_dim)
    vh = v.astype(np.float64).reshape(v.shape[0], num_kv_heads, head_dim)
    out = np.zeros_like(qh)
    for t, pos in enumerate(q_positions):
        first = max(0, pos + 1 - window) if window else 0
        for h in range(num_heads):
            s = kh[first: pos + 1, h // group] @ qh[t, h] * scale
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ vh[first: pos + 1, h // group]
    return out.reshape(q.shape).astype(np.float32)


def forward(model, token_ids: np.ndarray) -> np.ndarray:
    """Logits (T, vocab) of one sequence from position 0, composed from the references above.

    `model` is an engine.model.DecoderModel (only its weights, per-layer tables and config are used);
    the architecture's switches (engine/architectures.py) are followed step by step.
    """
    from ..architectures import FFN_GELU_TANH, ROPE_NEOX
    cfg = model.config
    traits = cfg.traits
    T = len(token_ids)
    positions = np.arange(T)
    H, KV, hd, eps = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps
    rotate = rope_neox if traits.rope_mode == ROPE_NEOX else rope
    act = gelu_tanh_mul if traits.ffn_activation == FFN_GELU_TANH else silu_mul
    x = dequantize(model.embedding.data, model.embedding.ggml_type)[token_ids].astype(np.float32)
    if traits.scale_embeddings:
        x = (x * np.float32(np.sqrt(cfg.hidden_size))).astype(np.float32)
    names = ("q", "k", "v", "o", "gate", "up", "down")
    nq, nk = H * hd, KV * hd
    for layer in range(cfg.num_layers):
        w = {n: (model.layer_weights[layer * 7 + i], model.layer_types[layer, i]) for i, n in enumerate(names)}
        norms = model.layer_norms[layer]
        inv_freq = model.rope_tables[model.layer_rope[layer]]
        h = rms_norm(x, norms[0], eps)
        q, k, v = matmul(*w["q"], h), matmul(*w["k"], h), matmul(*w["v"], h)
        if traits.qkv_bias:
            bias = model.qkv_bias[layer]
            q, k, v = q + bias[:nq], k + bias[nq:nq + nk], v + bias[nq + nk:]
        if traits.qk_norm:
            q = head_rms_norm(q, H, hd, model.head_norms[layer, 0], eps)
            k = head_rms_norm(k, KV, hd, model.head_norms[layer, 1], eps)
        q, k = rotate(q, H, hd, positions, inv_freq), rotate(k, KV, hd, positions, inv_freq)
        attn = causal_attention(q, k, v, H, KV, hd, positions, float(model.attention_scale),
                                int(model.layer_window[layer]))
        a = matmul(*w["o"], attn)
        x = x + (rms_norm(a, norms[2], eps) if traits.post_norms else a)
        h = rms_norm(x, norms[1], eps)
        if cfg.is_moe:
            extra = [(model.moe_weights[layer * 5 + i], model.moe_types[layer, i]) for i in range(5)]
            f = moe_ffn(h, extra[0], w["gate"], w["up"], w["down"], cfg.num_experts_used, cfg.expert_weights_norm,
                        cfg.expert_weights_scale, act)
            if model.has_shared_expert:
                f = f + shared_expert(h, *extra[1:], act=act)
        else:
            f = matmul(*w["down"], act(matmul(*w["gate"], h), matmul(*w["up"], h)))
        x = x + (rms_norm(f, norms[3], eps) if traits.post_norms else f)
    h = rms_norm(x, model.output_norm, eps)
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
