"""Causal grouped-query attention over a paged KV cache (CPU, numba).

Cache layout, one layer (block_size a multiple of 16):
    k_cache (num_blocks, num_kv_heads, head_dim, block_size) f32   keys transposed inside a block,
                                                                   so 16 keys' scores are one FMA chain
    v_cache (num_blocks, num_kv_heads, block_size, head_dim) f32

A step's tokens may belong to different sequences and be prefill or decode tokens alike: token t
of sequence seq_ids[t] sits at positions[t] and attends to that sequence's keys 0..positions[t],
found through block_tables[seq_ids[t]]. Its own key and value must already be written.
"""
import numpy as np
from numba import njit, prange

from ..simd import hmax, vexp, vfma, vload, vmax, vmul, vsplat, vstore, vsub, vzero

_f32 = np.float32


@njit(cache=True, parallel=True)
def write_kv(k, v, slot_mapping, k_cache, v_cache):
    """Store k, v (T, num_kv_heads*head_dim) at cache slots slot_mapping (T,) = block*block_size + offset."""
    n_kv = k_cache.shape[1]
    hd = k_cache.shape[2]
    bs = k_cache.shape[3]
    for t in prange(k.shape[0]):
        block = slot_mapping[t] // bs
        offset = slot_mapping[t] % bs
        for h in range(n_kv):
            for d in range(hd):
                k_cache[block, h, d, offset] = k[t, h * hd + d]
                v_cache[block, h, offset, d] = v[t, h * hd + d]


@njit(cache=True, parallel=True)
def paged_attention(q, k_cache, v_cache, block_tables, seq_ids, positions, scale, out):
    """out (T, num_heads*head_dim) = softmax(q k^T * scale) v per head, causal, over the paged cache.

    q (T, num_heads*head_dim) f32 (RoPE applied); block_tables (S, max_blocks) i32;
    seq_ids (T,) i32; positions (T,) i32.
    """
    T = q.shape[0]
    n_kv = k_cache.shape[1]
    hd = k_cache.shape[2]
    bs = k_cache.shape[3]
    group = q.shape[1] // hd // n_kv
    vscale = vsplat(_f32(scale))
    for item in prange(T * n_kv):
        t = item // n_kv
        kvh = item % n_kv
        n_keys = positions[t] + 1
        table = block_tables[seq_ids[t]]
        padded = (n_keys + 15) // 16 * 16
        scores = np.empty(padded, np.float32)
        for g in range(group):
            h = kvh * group + g
            qh = q[t, h * hd:(h + 1) * hd]
            # scores[j] = q . key_j * scale, sixteen keys at a time
            for key0 in range(0, n_keys, 16):
                kt = k_cache[table[key0 // bs], kvh]
                s0 = key0 % bs
                acc = vzero()
                for d in range(hd):
                    acc = vfma(vsplat(qh[d]), vload(kt[d], s0), acc)
                vstore(scores, key0, vmul(acc, vscale))
            # softmax over the n_keys valid scores (lanes past n_keys hold garbage: never read)
            full = n_keys // 16 * 16
            m = _f32(-3.0e38)
            if full > 0:
                mv = vload(scores, 0)
                for j in range(16, full, 16):
                    mv = vmax(mv, vload(scores, j))
                m = hmax(mv)
            for j in range(full, n_keys):
                m = max(m, scores[j])
            vm = vsplat(m)
            for j in range(0, padded, 16):
                vstore(scores, j, vexp(vsub(vload(scores, j), vm)))
            total = _f32(0.0)
            for j in range(n_keys):
                total += scores[j]
            inv = _f32(1.0) / total
            # out_h = sum_j p_j v_j
            oh = out[t, h * hd:(h + 1) * hd]
            for d0 in range(0, hd, 16):
                vstore(oh, d0, vzero())
            for j in range(n_keys):
                vrow = v_cache[table[j // bs], kvh, j % bs]
                p = vsplat(scores[j] * inv)
                for d0 in range(0, hd, 16):
                    vstore(oh, d0, vfma(p, vload(vrow, d0), vload(oh, d0)))

