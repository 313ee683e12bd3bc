"""The Llama decoder stack on the GPU: the per-layer sequence of CUDA kernel launches.

The same computation as ../cpu/llama.py, layer by layer (T tokens, D hidden, F FFN width):
    h = rms_norm(x) * attn_norm;  q, k, v = h Wq^T, h Wk^T, h Wv^T;  q, k = rope(q), rope(k)
    cache[slot_mapping] = k, v;   x += attention(q, cache) Wo^T
    h = rms_norm(x) * ffn_norm;   x += (silu(h Wg^T) * (h Wu^T)) Wd^T
Every array stays on the device; the residual adds ride in the output matmuls (matmul_add).
Scratch arrays come from a Workspace that grows to the largest step seen and is then reused,
so a step allocates no device memory.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .attention import paged_attention, prefill_attention, write_kv
from .matmul import matmul, matmul_add
from .ops import gather_rows, rms_norm, rope, silu_mul

WQ, WK, WV, WO, W_GATE, W_UP, W_DOWN = range(7)
MATRICES_PER_LAYER = 7


class Workspace:
    """Named device scratch arrays of shape (rows, *rest), grown by doubling, returned as [:rows] views."""

    def __init__(self):
        self._buffers: dict[str, object] = {}

    def get(self, name: str, rows: int, rest: tuple = (), dtype=np.float32):
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1:] != tuple(rest) or buf.dtype != np.dtype(dtype):
            capacity = max(rows, 2 * buf.shape[0] if buf is not None and buf.shape[1:] == tuple(rest) else 1)
            buf = cuda.device_array((capacity, *rest), dtype)
            self._buffers[name] = buf
        return buf[:rows]


def decoder_stack(x, weights, weight_types, norms, k_layers, v_layers, rope_cos, rope_sin, block_tables, seq_ids,
                  positions, slot_mapping, num_heads, eps, tiles, singles, workspace: Workspace):
    """Run all layers over x (T, D) f32 in place (device arrays throughout).

    weights: list of (rows, row_bytes) u8, 7 per layer (WQ..W_DOWN); weight_types (L, 7) GGML ids (host);
    norms (L, 2, D) f32; k_layers / v_layers: per layer (blocks, KV, hd, bs) / (blocks, KV, bs, hd) f32;
    rope_cos/sin (T, rope_dim/2) f32; block_tables (S, max_blocks), seq_ids (T,), positions (T,),
    slot_mapping (T,) i32; tiles (n, 2) i32 and singles (m,) i32 from attention.query_tiles.
    """
    T, D = x.shape
    n_kv, hd = k_layers[0].shape[1], k_layers[0].shape[2]
    F = weights[W_GATE].shape[0]
    scale = 1.0 / np.sqrt(hd)
    h = workspace.get("h", T, (D,))
    q = workspace.get("q", T, (num_heads * hd,))
    k = workspace.get("k", T, (n_kv * hd,))
    v = workspace.get("v", T, (n_kv * hd,))
    attn = workspace.get("attn", T, (num_heads * hd,))
    gate = workspace.get("gate", T, (F,))
    up = workspace.get("up", T, (F,))
    for layer in range(weight_types.shape[0]):
        w = layer * MATRICES_PER_LAYER
        types = weight_types[layer]
        rms_norm(x, norms[layer, 0], eps, h)
        matmul(weights[w + WQ], types[WQ], h, q)
        matmul(weights[w + WK], types[WK], h, k)
        matmul(weights[w + WV], types[WV], h, v)
        rope(q, num_heads, hd, rope_cos, rope_sin)
        rope(k, n_kv, hd, rope_cos, rope_sin)
        write_kv(k, v, slot_mapping, k_layers[layer], v_layers[layer])
        paged_attention(q, k_layers[layer], v_layers[layer], block_tables, seq_ids, positions, scale, attn, singles)
        prefill_attention(q, k_layers[layer], v_layers[layer], block_tables, seq_ids, positions, scale, tiles, attn)
        matmul_add(weights[w + WO], types[WO], attn, x)
        rms_norm(x, norms[layer, 1], eps, h)
        matmul(weights[w + W_GATE], types[W_GATE], h, gate)
        matmul(weights[w + W_UP], types[W_UP], h, up)
        silu_mul(gate, up, gate)
        matmul_add(weights[w + W_DOWN], types[W_DOWN], gate, x)


def output_logits(x, rows, norm, eps, head, head_type, logits, workspace: Workspace):
    """logits (R, vocab) = rms_norm(x[rows]) * norm @ head^T; rows (R,) i32 on the device."""
    h = workspace.get("head_in", rows.shape[0], (x.shape[1],))
    gather_rows(x, rows, h)
    rms_norm(h, norm, eps, h)
    matmul(head, head_type, h, logits)
