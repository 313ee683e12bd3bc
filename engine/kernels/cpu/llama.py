"""The Llama decoder stack as one numba call per forward (CPU).

One call runs every layer, so a decode step pays Python-to-numba dispatch once, not once per
kernel (~300 kernels per token otherwise). The kernels it calls are the ones tested one by one.

Per layer, for the T tokens of a step (D = hidden, F = FFN width, H/KV = query/kv heads, hd):
    h = rms_norm(x) * attn_norm                                  (T, D)
    q, k, v = h Wq^T, h Wk^T, h Wv^T                             (T, H*hd), (T, KV*hd), (T, KV*hd)
    q, k = rope(q), rope(k);   cache[slot_mapping] = k, v
    x += attention(q, cache) Wo^T                                (T, D)
    h = rms_norm(x) * ffn_norm
    x += (silu(h Wg^T) * (h Wu^T)) Wd^T                          (T, F) -> (T, D)
"""
import numpy as np
from numba import njit

from .attention import paged_attention, write_kv
from .matmul import matmul
from .ops import add_inplace, rms_norm, rope, silu_mul
from .projections import project

# Order of a layer's seven matrices in `weights` / `weight_types`.
WQ, WK, WV, WO, W_GATE, W_UP, W_DOWN = range(7)
MATRICES_PER_LAYER = 7


@njit(cache=True, nogil=True)
def decoder_stack(x, weights, weight_types, norms, k_cache, v_cache, rope_cos, rope_sin,
                  block_tables, seq_ids, positions, slot_mapping, num_heads, eps, int8_activations):
    """Run all layers over x (T, D) f32 in place.

    int8_activations: decode-sized steps quantize activations to int8 (matmul.py); else float32.

    weights: list of (rows, row_bytes) u8, 7 per layer (WQ..W_DOWN); weight_types (L, 7) GGML ids;
    norms (L, 2, D) f32 (attention norm, FFN norm); k_cache (L, blocks, KV, hd, bs) f32;
    v_cache (L, blocks, KV, bs, hd) f32; rope_cos/sin (T, rope_dim/2); block_tables (S, max_blocks),
    seq_ids (T,), positions (T,), slot_mapping (T,) i32.
    """
    T, D = x.shape
    n_kv = k_cache.shape[2]
    hd = k_cache.shape[3]
    F = weights[W_GATE].shape[0]
    scale = 1.0 / np.sqrt(hd)
    h = np.empty((T, D), np.float32)
    q = np.empty((T, num_heads * hd), np.float32)
    k = np.empty((T, n_kv * hd), np.float32)
    v = np.empty((T, n_kv * hd), np.float32)
    attn = np.empty((T, num_heads * hd), np.float32)
    gate = np.empty((T, F), np.float32)
    up = np.empty((T, F), np.float32)
    proj = np.empty((T, D), np.float32)
    no_matrix = np.empty((0, 0), np.uint8)
    no_output = np.empty((0, 0), np.float32)
    for layer in range(weight_types.shape[0]):
        w = layer * MATRICES_PER_LAYER
        types = weight_types[layer]
        rms_norm(x, norms[layer, 0], eps, h)
        project(h, int8_activations, weights[w + WQ], types[WQ], q, weights[w + WK], types[WK], k,
                weights[w + WV], types[WV], v)
        rope(q, num_heads, hd, rope_cos, rope_sin)
        rope(k, n_kv, hd, rope_cos, rope_sin)
        write_kv(k, v, slot_mapping, k_cache[layer], v_cache[layer])
        paged_attention(q, k_cache[layer], v_cache[layer], block_tables, seq_ids, positions, scale, attn)
        project(attn, int8_activations, weights[w + WO], types[WO], proj, no_matrix, 0, no_output,
                no_matrix, 0, no_output)
        add_inplace(x, proj)
        rms_norm(x, norms[layer, 1], eps, h)
        project(h, int8_activations, weights[w + W_GATE], types[W_GATE], gate, weights[w + W_UP], types[W_UP], up,
                no_matrix, 0, no_output)
        silu_mul(gate, up, gate)
        project(gate, int8_activations, weights[w + W_DOWN], types[W_DOWN], proj, no_matrix, 0, no_output,
                no_matrix, 0, no_output)
        add_inplace(x, proj)


@njit(cache=True, nogil=True)
def output_logits(x, rows, norm, eps, head, head_type, logits, int8_activations):
    """logits (len(rows), vocab) = rms_norm(x[rows]) * norm @ head^T."""
    h = np.empty((rows.shape[0], x.shape[1]), np.float32)
    for i in range(rows.shape[0]):
        h[i] = x[rows[i]]
    rms_norm(h, norm, eps, h)
    matmul(head, head_type, h, logits, int8_activations)   # one matrix: matmul's own row loop
