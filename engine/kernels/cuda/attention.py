"""Causal grouped-query attention over the paged KV cache (CUDA).

Cache layout, one layer, as on the CPU (../cpu/attention.py):
    k_cache (num_blocks, num_kv_heads, head_dim, block_size) f32
    v_cache (num_blocks, num_kv_heads, block_size, head_dim) f32

Token t of sequence seq_ids[t] at positions[t] attends to that sequence's keys 0..positions[t],
found through block_tables[seq_ids[t]]; its own key and value must already be written (write_kv).

Two kernels, both with a running (online) softmax so no score vector of context length is kept:
- paged_attention: one block per (token, query head), ATTENTION_THREADS keys scored at a time,
  one key per thread; then thread d accumulates output dimension d. For decode, where a token
  is alone in its sequence's rows.
- prefill_attention (flash-attention style): one block per (query tile, head). A tile is up to
  PREFILL_QUERY_TILE consecutive rows of one sequence (a prefill chunk); key tiles of KEY_TILE keys
  are staged in shared memory and shared by the tile's queries, so each key is read once per
  tile rather than once per query. A key tile never straddles two cache blocks (block_size is a
  multiple of KEY_TILE).
"""
import math

import numpy as np
from numba import cuda, float32

from .launch import ATTENTION_THREADS, KEY_TILE, MAX_HEAD_DIM, PREFILL_QUERY_TILE, elementwise_grid
from .reduce import block_max, block_sum, larger, smaller

_f32 = np.float32
_MASKED = _f32(-1.0e30)          # a score that exponentiates to 0 against any real maximum


# ----------------------------------------------------------------------------- writing the cache

@cuda.jit
def _write_kv_kernel(k, v, slot_mapping, k_cache, v_cache):
    n_kv = k_cache.shape[1]
    hd = k_cache.shape[2]
    bs = k_cache.shape[3]
    width = n_kv * hd
    for e in range(cuda.grid(1), k.shape[0] * width, cuda.gridsize(1)):
        t = e // width
        c = e % width
        block = slot_mapping[t] // bs
        offset = slot_mapping[t] % bs
        k_cache[block, c // hd, c % hd, offset] = k[t, c]
        v_cache[block, c // hd, offset, c % hd] = v[t, c]


def write_kv(k, v, slot_mapping, k_cache, v_cache):
    """Store k, v (T, num_kv_heads*head_dim) at cache slots slot_mapping (T,) = block*block_size + offset."""
    blocks, threads = elementwise_grid(k.shape[0] * k.shape[1])
    _write_kv_kernel[blocks, threads](k, v, slot_mapping, k_cache, v_cache)


# ----------------------------------------------------------------------------- decode: one query per block

@cuda.jit
def _paged_attention_kernel(q, k_cache, v_cache, block_tables, seq_ids, positions, scale, rows, out):
    t = rows[cuda.blockIdx.x]
    h = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    n_kv = k_cache.shape[1]
    hd = k_cache.shape[2]
    bs = k_cache.shape[3]
    kvh = h // (q.shape[1] // hd // n_kv)
    seq = seq_ids[t]
    n_keys = positions[t] + 1
    q_s = cuda.shared.array(MAX_HEAD_DIM, float32)
    o_s = cuda.shared.array(MAX_HEAD_DIM, float32)
    p_s = cuda.shared.array(ATTENTION_THREADS, float32)
    buf = cuda.shared.array(ATTENTION_THREADS, float32)
    for d in range(tid, hd, nt):
        q_s[d] = q[t, h * hd + d]
        o_s[d] = 0.0
    cuda.syncthreads()
    m = _MASKED                     # running maximum and sum of exp(score - m): the same in every thread
    total = _f32(0.0)
    for c0 in range(0, n_keys, nt):
        j = c0 + tid
        s = _MASKED
        if j < n_keys:
            block = block_tables[seq, j // bs]
            dot = _f32(0.0)
            for d in range(hd):
                dot += q_s[d] * k_cache[block, kvh, d, j % bs]
            s = dot * scale
        m_new = larger(m, block_max(buf, s))
        p = math.exp(s - m_new) if j < n_keys else _f32(0.0)
        p_s[tid] = p
        alpha = math.exp(m - m_new)
        total = total * alpha + block_sum(buf, p)          # its barriers also publish p_s
        for d in range(tid, hd, nt):
            acc = o_s[d] * alpha
            for jj in range(smaller(nt, n_keys - c0)):
                key = c0 + jj
                acc += p_s[jj] * v_cache[block_tables[seq, key // bs], kvh, key % bs, d]
            o_s[d] = acc
        m = m_new
        cuda.syncthreads()                                 # p_s is rewritten by the next chunk
    for d in range(tid, hd, nt):
        out[t, h * hd + d] = o_s[d] / total


def paged_attention(q, k_cache, v_cache, block_tables, seq_ids, positions, scale, out, rows=None):
    """out (T, num_heads*head_dim) = softmax(q k^T * scale) v per head, causal, over the paged cache.

    q (T, num_heads*head_dim) f32 (RoPE applied); block_tables (S, max_blocks) i32; seq_ids (T,) i32;
    positions (T,) i32; rows (R,) i32: the rows to compute (default all).
    """
    if rows is None:
        rows = cuda.to_device(np.arange(q.shape[0], dtype=np.int32))
    if rows.shape[0] == 0:
        return
    num_heads = q.shape[1] // k_cache.shape[2]
    _paged_attention_kernel[(rows.shape[0], num_heads), ATTENTION_THREADS](
        q, k_cache, v_cache, block_tables, seq_ids, positions, np.float32(scale), rows, out)


# ----------------------------------------------------------------------------- prefill: tiles of queries

@cuda.jit
def _prefill_attention_kernel(q, k_cache, v_cache, block_tables, seq_ids, positions, scale, tiles, out):
    r0 = tiles[cuda.blockIdx.x, 0]
    nq = tiles[cuda.blockIdx.x, 1]
    h = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    n_kv = k_cache.shape[1]
    hd = k_cache.shape[2]
    bs = k_cache.shape[3]
    kvh = h // (q.shape[1] // hd // n_kv)
    seq = seq_ids[r0]
    n_keys = positions[r0 + nq - 1] + 1           # the tile's rows are consecutive positions
    q_s = cuda.shared.array((PREFILL_QUERY_TILE, MAX_HEAD_DIM), float32)
    o_s = cuda.shared.array((PREFILL_QUERY_TILE, MAX_HEAD_DIM), float32)
    k_s = cuda.shared.array((KEY_TILE, MAX_HEAD_DIM), float32)
    v_s = cuda.shared.array((KEY_TILE, MAX_HEAD_DIM), float32)
    s_s = cuda.shared.array((PREFILL_QUERY_TILE, KEY_TILE), float32)
    m_s = cuda.shared.array(PREFILL_QUERY_TILE, float32)
    l_s = cuda.shared.array(PREFILL_QUERY_TILE, float32)
    a_s = cuda.shared.array(PREFILL_QUERY_TILE, float32)
    for e in range(tid, nq * hd, nt):
        q_s[e // hd, e % hd] = q[r0 + e // hd, h * hd + e % hd]
        o_s[e // hd, e % hd] = 0.0
    for i in range(tid, nq, nt):
        m_s[i] = _MASKED
        l_s[i] = 0.0
    for j0 in range(0, n_keys, KEY_TILE):
        block = block_tables[seq, j0 // bs]
        off0 = j0 % bs
        nk = smaller(KEY_TILE, n_keys - j0)
        for e in range(tid, KEY_TILE * hd, nt):
            d = e // KEY_TILE                      # keys vary fastest: k_cache rows are keys
            j = e % KEY_TILE
            k_s[j, d] = k_cache[block, kvh, d, off0 + j] if j < nk else _f32(0.0)
            j = e // hd                            # dimensions vary fastest: v_cache rows are dims
            d = e % hd
            v_s[j, d] = v_cache[block, kvh, off0 + j, d] if j < nk else _f32(0.0)
        cuda.syncthreads()
        for e in range(tid, nq * KEY_TILE, nt):
            i = e // KEY_TILE
            j = e % KEY_TILE
            s = _MASKED
            if j0 + j <= positions[r0 + i]:
                dot = _f32(0.0)
                for d in range(hd):
                    dot += q_s[i, d] * k_s[j, d]
                s = dot * scale
            s_s[i, j] = s
        cuda.syncthreads()
        for i in range(tid, nq, nt):
            m_old = m_s[i]
            m_new = m_old
            for j in range(KEY_TILE):
                m_new = larger(m_new, s_s[i, j])
            row_sum = _f32(0.0)
            for j in range(KEY_TILE):
                p = math.exp(s_s[i, j] - m_new)
                s_s[i, j] = p
                row_sum += p
            alpha = math.exp(m_old - m_new)
            l_s[i] = l_s[i] * alpha + row_sum
            m_s[i] = m_new
            a_s[i] = alpha
        cuda.syncthreads()
        for e in range(tid, nq * hd, nt):
            i = e // hd
            d = e % hd
            acc = o_s[i, d] * a_s[i]
            for j in range(KEY_TILE):
                acc += s_s[i, j] * v_s[j, d]
            o_s[i, d] = acc
        cuda.syncthreads()
    for e in range(tid, nq * hd, nt):
        out[r0 + e // hd, h * hd + e % hd] = o_s[e // hd, e % hd] / l_s[e // hd]


def prefill_attention(q, k_cache, v_cache, block_tables, seq_ids, positions, scale, tiles, out):
    """As paged_attention, for the rows of tiles (n_tiles, 2) i32 = (first row, rows): runs of
    consecutive rows of one sequence at consecutive positions, at most PREFILL_QUERY_TILE long."""
    if tiles.shape[0] == 0:
        return
    num_heads = q.shape[1] // k_cache.shape[2]
    _prefill_attention_kernel[(tiles.shape[0], num_heads), ATTENTION_THREADS](
        q, k_cache, v_cache, block_tables, seq_ids, positions, np.float32(scale), tiles, out)


def query_tiles(seq_ids: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a batch's rows (host arrays) into prefill tiles (n, 2) i32 and single decode rows (m,) i32:
    runs of one sequence at consecutive positions, cut every PREFILL_QUERY_TILE rows."""
    T = seq_ids.shape[0]
    breaks = np.flatnonzero((seq_ids[1:] != seq_ids[:-1]) | (positions[1:] != positions[:-1] + 1)) + 1
    starts = np.concatenate(([0], breaks)).astype(np.int64)
    ends = np.concatenate((breaks, [T])).astype(np.int64)
    tiles, singles = [], []
    for start, end in zip(starts, ends):
        if end - start == 1:
            singles.append(start)
            continue
        for s in range(start, end, PREFILL_QUERY_TILE):
            tiles.append((s, min(PREFILL_QUERY_TILE, end - s)))
    return np.array(tiles, np.int32).reshape(-1, 2), np.array(singles, np.int32)


# ----------------------------------------------------------------------------- blocks in and out

@cuda.jit
def _copy_block_out_kernel(cache, block, staging):
    per_layer = staging.shape[1]
    for e in range(cuda.grid(1), staging.shape[0] * per_layer, cuda.gridsize(1)):
        staging[e // per_layer, e % per_layer] = cache[e // per_layer, block, e % per_layer]


@cuda.jit
def _copy_block_in_kernel(staging, block, cache):
    per_layer = staging.shape[1]
    for e in range(cuda.grid(1), staging.shape[0] * per_layer, cuda.gridsize(1)):
        cache[e // per_layer, block, e % per_layer] = staging[e // per_layer, e % per_layer]


def copy_block_out(cache, block, staging):
    """staging (L, E) = cache (L, num_blocks, E) [:, block]: one block of every layer, contiguous."""
    grid, threads = elementwise_grid(staging.shape[0] * staging.shape[1])
    _copy_block_out_kernel[grid, threads](cache, block, staging)


def copy_block_in(staging, block, cache):
    """cache (L, num_blocks, E) [:, block] = staging (L, E)."""
    grid, threads = elementwise_grid(staging.shape[0] * staging.shape[1])
    _copy_block_in_kernel[grid, threads](staging, block, cache)
