"""The decoder stack as one numba call per forward (CPU), for every architecture.

One call runs every layer, so a decode step pays Python-to-numba dispatch once, not once per
kernel (~300 kernels per token otherwise). The kernels it calls are the ones tested one by one.
What differs between architectures (engine/architectures.py) arrives as switches and per-layer
arrays; the bracketed steps run only where an architecture has them.

Per layer, for the T tokens of a step (D = hidden, F = FFN width, H/KV = query/kv heads, hd):
    h = rms_norm(x) * attn_norm                                  (T, D)
    q, k, v = h Wq^T, h Wk^T, h Wv^T  [+ bq, bk, bv]             (T, H*hd), (T, KV*hd), (T, KV*hd)
    [q, k = rms_norm per head * q_norm, k_norm]
    q, k = rope(q), rope(k)  (this layer's table; normal or NEOX pairs);   cache[slot_mapping] = k, v
    a = attention(q, cache) Wo^T  (this layer's window, if local)  (T, D)
    x += [rms_norm(a) * post_attention_norm] a
    h = rms_norm(x) * ffn_norm
    f = (act(h Wg^T) * (h Wu^T)) Wd^T,  act = silu | gelu_tanh   (T, F) -> (T, D)
      | MoE: f = sum of the top-k experts' weighted FFNs (moe.py)  [+ sigmoid(h . g_s) * shared FFN(h)]
    x += [rms_norm(f) * post_ffw_norm] f
"""
import numpy as np
from numba import njit

from .attention import paged_attention_window, write_kv
from .matmul import matmul
from .moe import moe_ffn, shared_expert_add
from .ops import add_bias, add_inplace, head_rms_norm, rms_norm, rope, rope_neox
from .projections import gated_ffn, project

# Order of a layer's seven matrices in `weights` / `weight_types`.
WQ, WK, WV, WO, W_GATE, W_UP, W_DOWN = range(7)
MATRICES_PER_LAYER = 7
# Order of a layer's norms in `norms` (the last two only with post_norms).
ATTN_NORM, FFN_NORM, POST_ATTN_NORM, POST_FFN_NORM = range(4)
NORMS_PER_LAYER = 4
# An MoE layer's extra matrices in `moe_weights` / `moe_types` (its W_GATE, W_UP, W_DOWN slots hold
# the E experts stacked: (E*F, .), (E*F, .), (E*D, .)); the shared expert's only with one.
MOE_ROUTER, SHARED_GATE, SHARED_UP, SHARED_DOWN, SHARED_GATE_INP = range(5)
MOE_MATRICES_PER_LAYER = 5


@njit(cache=True, nogil=True)
def _rope(x, heads, hd, cos, sin, neox):
    if neox:
        rope_neox(x, heads, hd, cos, sin)
    else:
        rope(x, heads, hd, cos, sin)


@njit(cache=True, nogil=True)
def decoder_stack(x, weights, weight_types, norms, qkv_bias, head_norms, k_cache, v_cache, rope_cos, rope_sin,
                  layer_rope, layer_window, block_tables, seq_ids, positions, slot_mapping, num_heads, eps,
                  attention_scale, rope_neox_mode, gelu_ffn, has_qkv_bias, has_qk_norm, has_post_norms,
                  int8_activations, moe_weights, moe_types, num_experts_used, expert_weights_norm,
                  expert_weights_scale, has_shared_expert, expert_tokens):
    """Run all layers over x (T, D) f32 in place.

    int8_activations: decode-sized steps quantize activations to int8 (matmul.py); else float32.

    weights: list of (rows, row_bytes) u8, 7 per layer (WQ..W_DOWN); weight_types (L, 7) GGML ids;
    norms (L, 4, D) f32 (ATTN_NORM..POST_FFN_NORM); qkv_bias (L, H*hd + 2*KV*hd) f32 (q | k | v);
    head_norms (L, 2, hd) f32 (q, k); k_cache (L, blocks, KV, hd, bs), v_cache (L, blocks, KV, bs, hd)
    f32, or float16 bits in u16 (attention.py);
    rope_cos/sin (R, T, rope_dim/2), layer_rope (L,) i64 which of the R tables a layer uses;
    layer_window (L,) i64 sliding window of a layer (0: global); block_tables (S, max_blocks),
    seq_ids (T,), positions (T,), slot_mapping (T,) i32.
    MoE (num_experts_used = k > 0, else dense and the moe_* arguments unused): moe_weights list of
    (rows, row_bytes) u8, 5 per layer (MOE_ROUTER..SHARED_GATE_INP); moe_types (L, 5); expert_tokens
    (L, E) i64 += tokens routed to each expert of each layer.
    """
    T, D = x.shape
    n_kv = k_cache.shape[2]
    hd = k_cache.shape[3]
    # FFN width of the dense FFN, or of an MoE model's shared expert (0 without one)
    F = moe_weights[SHARED_GATE].shape[0] if num_experts_used else weights[W_GATE].shape[0]
    nq = num_heads * hd
    nk = n_kv * hd
    h = np.empty((T, D), np.float32)
    q = np.empty((T, nq), np.float32)
    k = np.empty((T, nk), np.float32)
    v = np.empty((T, nk), np.float32)
    attn = np.empty((T, nq), np.float32)
    gate = np.empty((T, F), np.float32)
    up = np.empty((T, F), np.float32)
    proj = np.empty((T, D), np.float32)
    shared_out = np.empty((T, D if has_shared_expert else 0), np.float32)   # the shared expert's FFN
    no_matrix = np.empty((0, 0), np.uint8)
    no_output = np.empty((0, 0), np.float32)
    for layer in range(weight_types.shape[0]):
        w = layer * MATRICES_PER_LAYER
        types = weight_types[layer]
        rms_norm(x, norms[layer, ATTN_NORM], eps, h)
        project(h, int8_activations, weights[w + WQ], types[WQ], q, weights[w + WK], types[WK], k,
                weights[w + WV], types[WV], v)
        if has_qkv_bias:
            add_bias(q, qkv_bias[layer, :nq])
            add_bias(k, qkv_bias[layer, nq:nq + nk])
            add_bias(v, qkv_bias[layer, nq + nk:])
        if has_qk_norm:
            head_rms_norm(q, num_heads, hd, head_norms[layer, 0], eps)
            head_rms_norm(k, n_kv, hd, head_norms[layer, 1], eps)
        cos = rope_cos[layer_rope[layer]]
        sin = rope_sin[layer_rope[layer]]
        _rope(q, num_heads, hd, cos, sin, rope_neox_mode)
        _rope(k, n_kv, hd, cos, sin, rope_neox_mode)
        write_kv(k, v, slot_mapping, k_cache[layer], v_cache[layer])
        paged_attention_window(q, k_cache[layer], v_cache[layer], block_tables, seq_ids, positions,
                               attention_scale, layer_window[layer], attn)
        project(attn, int8_activations, weights[w + WO], types[WO], proj, no_matrix, 0, no_output,
                no_matrix, 0, no_output)
        if has_post_norms:
            rms_norm(proj, norms[layer, POST_ATTN_NORM], eps, proj)
        add_inplace(x, proj)
        rms_norm(x, norms[layer, FFN_NORM], eps, h)
        if num_experts_used:
            m = layer * MOE_MATRICES_PER_LAYER
            mt = moe_types[layer]
            moe_ffn(h, int8_activations, moe_weights[m + MOE_ROUTER], mt[MOE_ROUTER], weights[w + W_GATE],
                    types[W_GATE], weights[w + W_UP], types[W_UP], weights[w + W_DOWN], types[W_DOWN],
                    num_experts_used, expert_weights_norm, expert_weights_scale, gelu_ffn, proj, expert_tokens[layer])
            if has_shared_expert:
                shared_expert_add(h, int8_activations, moe_weights[m + SHARED_GATE], mt[SHARED_GATE],
                                  moe_weights[m + SHARED_UP], mt[SHARED_UP], moe_weights[m + SHARED_DOWN],
                                  mt[SHARED_DOWN], moe_weights[m + SHARED_GATE_INP], mt[SHARED_GATE_INP], gelu_ffn,
                                  gate, up, shared_out, proj)
        else:
            gated_ffn(h, int8_activations, weights[w + W_GATE], types[W_GATE], weights[w + W_UP], types[W_UP],
                      weights[w + W_DOWN], types[W_DOWN], gelu_ffn, gate, up, proj)
        if has_post_norms:
            rms_norm(proj, norms[layer, POST_FFN_NORM], eps, proj)
        add_inplace(x, proj)


@njit(cache=True, nogil=True)
def output_logits(x, rows, norm, eps, head, head_type, logits, int8_activations):
    """logits (len(rows), vocab) = rms_norm(x[rows]) * norm @ head^T."""
    h = np.empty((rows.shape[0], x.shape[1]), np.float32)
    for i in range(rows.shape[0]):
        h[i] = x[rows[i]]
    rms_norm(h, norm, eps, h)
    matmul(head, head_type, h, logits, int8_activations)   # one matrix: matmul's own row loop
