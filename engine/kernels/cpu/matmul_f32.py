"""Products with float32 activations over weights in their GGML blocks (CPU, numba).

- matmul_rows_f32: every weight row is decoded in registers and dotted with each token
  (dot_f32.rows_f32); the row stays in L1 across the tokens. For decode in the exact mode.
- matmul_tiles_f32: rows are dequantized four at a time into an f32 tile, then a register-blocked
  product runs over the tokens, so decoding costs once per row, not per token. For small batches
  and speculative verification. With AVX-512, four tokens by four rows at a time (sixteen 16-lane
  accumulators: sixteen of its 32 registers). Without, one token by four rows: the 4x4 block's
  accumulators are 32 AVX2 registers and spill, and one token at a time measured 1.3-1.6x faster
  at 4-6 tokens on an AVX2-only EPYC (0.5B model's shapes). Both give the same bits: each output
  is the same fma chain and store_hsum4 tree.
- matmul_token_vectors_f32: an outer product instead of dot products. The batch is transposed
  once into vectors of sixteen tokens (k-major), rows are dequantized six at a time, and per k
  one token vector times six broadcast weights goes into six accumulators. The 4x4 tiles keep
  sixteen 16-lane accumulators, which on a host without AVX-512 are 32 of AVX2's 16 registers:
  they spill, and stream every token's row once per four weight rows. For batches of 8 tokens or
  more where a 16-lane vector is two registers (matmul.OUTER_PRODUCT_GEMM). (Packing sixteen
  weight rows k-major instead, six tokens broadcast, measured no faster even at 512 tokens and
  slower below 128: the repacking per panel costs what the tile saves.)

Both batch paths give a token the same result whatever the batch around it: each output is one
fixed-order sum (a 16-lane dot product then store_hsum4's tree; or one lane's fma over k in order).
"""
import numpy as np
from numba import njit, prange

from ..cpu_features import HAS_AVX512F
from ..simd import hsum, store_hsum4, vadd, vfma, vload, vsplat, vstore, vzero
from ..views import ROW_RANGE
from .dequant import dequantize_row
from .dot_f32 import XSUM_PAD, rows_f32

_ROW_TILE = 4
_FOUR_TOKEN_TILES = HAS_AVX512F   # 4x4 register blocks; otherwise 1x4 (module docstring)
_VECTOR_ROWS = 6      # weight rows per token-vector tile: six accumulators (12 AVX2 registers)
_TOKEN_VECTOR = 16    # tokens per token vector
_CHUNKS = 32          # parallel chunks of a batch product: a few per thread, each with its own scratch
_TOKEN_BLOCK_BYTES = 640 * 1024   # a token block's activations, in a 1 MiB L2 beside four rows
_MAX_TOKEN_BLOCK = 64


# ----------------------------------------------------------------------------- products

@njit(cache=True, nogil=True)
def block_sums(x):
    """x (T, K) f32 -> xsum (T, K/32 + XSUM_PAD): the sum of each 32-wide block of each row, then
    zeros (dot_row's K-quants read eight sums as one vector)."""
    xsum = np.zeros((x.shape[0], x.shape[1] // 32 + XSUM_PAD), np.float32)
    for t in range(x.shape[0]):
        for b in range(x.shape[1] // 32):
            xsum[t, b] = hsum(vadd(vload(x[t], b * 32), vload(x[t], b * 32 + 16)))
    return xsum


@njit(cache=True, nogil=True, inline="always")
def _gemm_4x4(w0, w1, w2, w3, x, t, out, r):
    """out[t:t+4, r:r+4] = x[t:t+4] @ [w0 w1 w2 w3]; w* (K,) f32 dequantized rows.
    Per token the four row sums go through store_hsum4, as in _gemm_1x4: a token's result does not
    depend on which group of four it falls in, so batch composition never changes an output."""
    x0 = x[t]
    x1 = x[t + 1]
    x2 = x[t + 2]
    x3 = x[t + 3]
    a00 = vzero(); a01 = vzero(); a02 = vzero(); a03 = vzero()
    a10 = vzero(); a11 = vzero(); a12 = vzero(); a13 = vzero()
    a20 = vzero(); a21 = vzero(); a22 = vzero(); a23 = vzero()
    a30 = vzero(); a31 = vzero(); a32 = vzero(); a33 = vzero()
    for k in range(0, w0.shape[0], 16):
        v0 = vload(w0, k)
        v1 = vload(w1, k)
        v2 = vload(w2, k)
        v3 = vload(w3, k)
        u = vload(x0, k)
        a00 = vfma(u, v0, a00); a01 = vfma(u, v1, a01); a02 = vfma(u, v2, a02); a03 = vfma(u, v3, a03)
        u = vload(x1, k)
        a10 = vfma(u, v0, a10); a11 = vfma(u, v1, a11); a12 = vfma(u, v2, a12); a13 = vfma(u, v3, a13)
        u = vload(x2, k)
        a20 = vfma(u, v0, a20); a21 = vfma(u, v1, a21); a22 = vfma(u, v2, a22); a23 = vfma(u, v3, a23)
        u = vload(x3, k)
        a30 = vfma(u, v0, a30); a31 = vfma(u, v1, a31); a32 = vfma(u, v2, a32); a33 = vfma(u, v3, a33)
    store_hsum4(out[t], r, a00, a01, a02, a03)
    store_hsum4(out[t + 1], r, a10, a11, a12, a13)
    store_hsum4(out[t + 2], r, a20, a21, a22, a23)
    store_hsum4(out[t + 3], r, a30, a31, a32, a33)


@njit(cache=True, nogil=True, inline="always")
def _gemm_1x4(w0, w1, w2, w3, xt, out, t, r):
    a0 = vzero(); a1 = vzero(); a2 = vzero(); a3 = vzero()
    for k in range(0, w0.shape[0], 16):
        u = vload(xt, k)
        a0 = vfma(u, vload(w0, k), a0)
        a1 = vfma(u, vload(w1, k), a1)
        a2 = vfma(u, vload(w2, k), a2)
        a3 = vfma(u, vload(w3, k), a3)
    store_hsum4(out[t], r, a0, a1, a2, a3)


@njit(cache=True, nogil=True, parallel=True)
def matmul_rows_f32(w, ggml_type, x, xsum, out):
    """Decode path: out[t, r] = dot(w[r], x[t]) for every row r and token t, ranges of
    ROW_RANGE rows in parallel."""
    n_ranges = (w.shape[0] + ROW_RANGE - 1) // ROW_RANGE
    for i in prange(n_ranges):
        rows_f32(ggml_type, w, i * ROW_RANGE, min(i * ROW_RANGE + ROW_RANGE, w.shape[0]), x, xsum, out)


@njit(cache=True, nogil=True, inline="always")
def token_block(K):
    """Tokens per block of the tile product: as many as keep the block's activations (tokens x K
    float32) within _TOKEN_BLOCK_BYTES, a multiple of four, at least four."""
    return max(4, min(_MAX_TOKEN_BLOCK, _TOKEN_BLOCK_BYTES // (4 * K)) // 4 * 4)


@njit(cache=True, nogil=True, parallel=True)
def matmul_tiles_f32(w, ggml_type, x, out):
    """Batch path: dequantize four rows, then a register-blocked product over a block of tokens.

    Rows are split into a few contiguous chunks per thread; each chunk allocates its scratch once
    (an allocation per tile cost ~80k allocations per decode step of the whole model). Tokens go
    in blocks (token_block) that stay in the core's L2 while every tile of the chunk passes over
    them; the four rows are dequantized again for each block. With all T tokens in one pass, x
    streamed from L3 once per four rows: 97 GFLOP/s at 512 tokens against 283 at 64 on a Zen 5
    EPYC (Q4_K, 8960 x 1536, `python bench/bench_gemm.py`)."""
    N = w.shape[0]
    K = x.shape[1]
    T = x.shape[0]
    n_tiles = (N + _ROW_TILE - 1) // _ROW_TILE
    n_chunks = min(n_tiles, _CHUNKS)
    tb = token_block(K)
    for chunk in prange(n_chunks):
        wt = np.zeros((_ROW_TILE, K), np.float32)
        tile_out = np.empty((tb, _ROW_TILE), np.float32)
        for t0 in range(0, T, tb):
            t1 = min(T, t0 + tb)
            xb = x[t0:t1]
            ob = out[t0:t1]
            for tile in range(chunk * n_tiles // n_chunks, (chunk + 1) * n_tiles // n_chunks):
                r = tile * _ROW_TILE
                rows = min(_ROW_TILE, N - r)
                for i in range(rows):
                    dequantize_row(ggml_type, w[r + i], wt[i])
                if rows == _ROW_TILE:                       # straight into out's columns r..r+3
                    _tile_over_tokens(wt, xb, ob, r)
                else:                                       # the last, ragged tile: out has no room for four
                    _tile_over_tokens(wt, xb, tile_out, 0)
                    for i in range(rows):
                        for t in range(t1 - t0):
                            ob[t, r + i] = tile_out[t, i]


@njit(cache=True, nogil=True, inline="always")
def _tile_over_tokens(wt, xb, dst, col):
    """dst[t, col:col+4] = xb[t] @ wt[0:4]^T for every token t of the block."""
    T = xb.shape[0]
    t = 0
    while _FOUR_TOKEN_TILES and t + 4 <= T:
        _gemm_4x4(wt[0], wt[1], wt[2], wt[3], xb, t, dst, col)
        t += 4
    while t < T:
        _gemm_1x4(wt[0], wt[1], wt[2], wt[3], xb[t], dst, t, col)
        t += 1


@njit(cache=True, nogil=True, inline="always")
def _token_vector_tile(rows, xv, tile_out):
    """tile_out[i] = sum_k rows[i, k] * xv[k * 16 : k * 16 + 16] for i < 6: six weight rows against
    one vector of sixteen tokens. rows (6, K) f32 dequantized, xv (K * 16,) f32 k-major, tile_out (6, 16)."""
    w0 = rows[0]
    w1 = rows[1]
    w2 = rows[2]
    w3 = rows[3]
    w4 = rows[4]
    w5 = rows[5]
    a0 = vzero(); a1 = vzero(); a2 = vzero(); a3 = vzero(); a4 = vzero(); a5 = vzero()
    for k in range(rows.shape[1]):
        b = vload(xv, k * _TOKEN_VECTOR)
        a0 = vfma(vsplat(w0[k]), b, a0)
        a1 = vfma(vsplat(w1[k]), b, a1)
        a2 = vfma(vsplat(w2[k]), b, a2)
        a3 = vfma(vsplat(w3[k]), b, a3)
        a4 = vfma(vsplat(w4[k]), b, a4)
        a5 = vfma(vsplat(w5[k]), b, a5)
    vstore(tile_out[0], 0, a0)
    vstore(tile_out[1], 0, a1)
    vstore(tile_out[2], 0, a2)
    vstore(tile_out[3], 0, a3)
    vstore(tile_out[4], 0, a4)
    vstore(tile_out[5], 0, a5)


@njit(cache=True, nogil=True, parallel=True)
def matmul_token_vectors_f32(w, ggml_type, x, out):
    """Batch path without AVX-512: out (T, N) = x (T, K) @ W^T with x transposed into vectors
    of sixteen tokens (xt[v, k * 16 + l] = x[16 v + l, k], zero past T) and six rows dequantized
    at a time (module docstring)."""
    N = w.shape[0]
    K = x.shape[1]
    T = x.shape[0]
    n_vectors = (T + _TOKEN_VECTOR - 1) // _TOKEN_VECTOR
    xt = np.zeros((n_vectors, K * _TOKEN_VECTOR), np.float32)
    for t in range(T):
        v, lane = divmod(t, _TOKEN_VECTOR)
        for k in range(K):
            xt[v, k * _TOKEN_VECTOR + lane] = x[t, k]
    n_tiles = (N + _VECTOR_ROWS - 1) // _VECTOR_ROWS
    n_chunks = min(n_tiles, _CHUNKS)
    for chunk in prange(n_chunks):
        rows = np.zeros((_VECTOR_ROWS, K), np.float32)         # rows past N: computed, never written
        tile_out = np.empty((_VECTOR_ROWS, _TOKEN_VECTOR), np.float32)
        for tile in range(chunk * n_tiles // n_chunks, (chunk + 1) * n_tiles // n_chunks):
            r = tile * _VECTOR_ROWS
            n_rows = min(_VECTOR_ROWS, N - r)
            for i in range(n_rows):
                dequantize_row(ggml_type, w[r + i], rows[i])
            for v in range(n_vectors):
                _token_vector_tile(rows, xt[v], tile_out)
                for lane in range(min(_TOKEN_VECTOR, T - v * _TOKEN_VECTOR)):
                    for i in range(n_rows):
                        out[v * _TOKEN_VECTOR + lane, r + i] = tile_out[i, lane]
