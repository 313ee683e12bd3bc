"""Products with float32 activations over weights in their GGML blocks (CPU, numba).

- matmul_rows_f32: every weight row is decoded in registers and dotted with each token
  (dot_f32.dot_row); the row stays in L1 across the tokens. For decode in the exact mode.
- matmul_tiles_f32: rows are dequantized four at a time into an f32 tile, then a 4x4 register-blocked
  product runs over the tokens, so decoding costs once per row, not per token. For batches.
"""
import numpy as np
from numba import njit, prange

from ..simd import hsum, store_hsum4, vadd, vfma, vload, vzero
from .dequant import dequantize_row
from .dot_f32 import XSUM_PAD, dot_row

_ROW_TILE = 4
_CHUNKS = 32          # parallel chunks of a batch product: a few per thread, each with its own scratch


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
    """Decode path: out[t, r] = dot(w[r], x[t]) for every row r (in parallel) and token t."""
    for r in prange(w.shape[0]):
        row = w[r]
        for t in range(x.shape[0]):
            out[t, r] = dot_row(ggml_type, row, x[t], xsum[t])


@njit(cache=True, nogil=True, parallel=True)
def matmul_tiles_f32(w, ggml_type, x, out):
    """Batch path: dequantize four rows, then a register-blocked product over all tokens.

    Rows are split into a few contiguous chunks per thread; each chunk allocates its scratch once
    (an allocation per tile cost ~80k allocations per decode step of the whole model)."""
    N = w.shape[0]
    K = x.shape[1]
    T = x.shape[0]
    n_tiles = (N + _ROW_TILE - 1) // _ROW_TILE
    n_chunks = min(n_tiles, _CHUNKS)
    for chunk in prange(n_chunks):
        wt = np.zeros((_ROW_TILE, K), np.float32)
        tile_out = np.empty((T, _ROW_TILE), np.float32)
        for tile in range(chunk * n_tiles // n_chunks, (chunk + 1) * n_tiles // n_chunks):
            r = tile * _ROW_TILE
            rows = min(_ROW_TILE, N - r)
            for i in range(rows):
                dequantize_row(ggml_type, w[r + i], wt[i])
            t = 0
            while t + 4 <= T:
                _gemm_4x4(wt[0], wt[1], wt[2], wt[3], x, t, tile_out, 0)
                t += 4
            while t < T:
                _gemm_1x4(wt[0], wt[1], wt[2], wt[3], x[t], tile_out, t, 0)
                t += 1
            for i in range(rows):
                for t in range(T):
                    out[t, r + i] = tile_out[t, i]
