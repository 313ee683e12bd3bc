"""Products with float32 activations over weights in their GGML blocks (CPU, numba).

- matmul_rows_f32: every weight row is decoded in registers and dotted with each token
  (dot_f32.dot_row); the row stays in L1 across the tokens. For decode in the exact mode.
- matmul_tiles_f32: rows are dequantized four at a time into an f32 tile, then a 4x4 register-blocked
  product runs over the tokens, so decoding costs once per row, not per token. For batches.
- matmul_panels_f32: rows are dequantized sixteen at a time into a packed panel (k-major: the
  sixteen rows' weights at k are one vector), then each group of six tokens is an outer-product
  tile: per k, one panel vector times six broadcast activations into six accumulators. Its 4x4
  sibling keeps sixteen 16-lane accumulators, which on a host without AVX-512 are 32 of AVX2's 16
  registers: it spills, and streams every token's row once per four weight rows. For long
  batches (prefill) where a 16-lane vector is two registers (matmul.PANEL_GEMM).

Both batch paths give a token the same result whatever the batch around it: each output is one
fixed-order sum (a 16-lane dot product then store_hsum4's tree; or one lane's sum over k).
"""
import numpy as np
from numba import njit, prange

from ..simd import hsum, store_hsum4, vadd, vfma, vload, vsplat, vstore, vzero
from .dequant import dequantize_row
from .dot_f32 import XSUM_PAD, dot_row

_ROW_TILE = 4
_PANEL_ROWS = 16      # weight rows per packed panel: one 16-lane vector per k
_PANEL_TOKENS = 6     # tokens per outer-product tile: six accumulators (12 AVX2 registers)
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


@njit(cache=True, nogil=True, inline="always")
def _panel_tile(panel, x, t, tile_out):
    """tile_out[i] = x[t + i] @ panel for i < 6 (a token past the batch's end repeats its last one);
    panel (K * 16,) f32 k-major: panel[k * 16 + j] = W[j, k]. tile_out (6, 16) f32."""
    last = x.shape[0] - 1
    x0 = x[t]
    x1 = x[min(t + 1, last)]
    x2 = x[min(t + 2, last)]
    x3 = x[min(t + 3, last)]
    x4 = x[min(t + 4, last)]
    x5 = x[min(t + 5, last)]
    a0 = vzero(); a1 = vzero(); a2 = vzero(); a3 = vzero(); a4 = vzero(); a5 = vzero()
    for k in range(x.shape[1]):
        b = vload(panel, k * _PANEL_ROWS)
        a0 = vfma(vsplat(x0[k]), b, a0)
        a1 = vfma(vsplat(x1[k]), b, a1)
        a2 = vfma(vsplat(x2[k]), b, a2)
        a3 = vfma(vsplat(x3[k]), b, a3)
        a4 = vfma(vsplat(x4[k]), b, a4)
        a5 = vfma(vsplat(x5[k]), b, a5)
    vstore(tile_out[0], 0, a0)
    vstore(tile_out[1], 0, a1)
    vstore(tile_out[2], 0, a2)
    vstore(tile_out[3], 0, a3)
    vstore(tile_out[4], 0, a4)
    vstore(tile_out[5], 0, a5)


@njit(cache=True, nogil=True, parallel=True)
def matmul_panels_f32(w, ggml_type, x, out):
    """Batch path for long batches: out (T, N) = x (T, K) @ W^T, sixteen rows dequantized into a
    packed panel at a time, then 6-token outer-product tiles over it (module docstring)."""
    N = w.shape[0]
    K = x.shape[1]
    T = x.shape[0]
    n_panels = (N + _PANEL_ROWS - 1) // _PANEL_ROWS
    n_chunks = min(n_panels, _CHUNKS)
    for chunk in prange(n_chunks):
        rows = np.zeros((_PANEL_ROWS, K), np.float32)         # a last panel's missing rows stay 0
        panel = np.empty(K * _PANEL_ROWS, np.float32)
        tile_out = np.empty((_PANEL_TOKENS, _PANEL_ROWS), np.float32)
        for p in range(chunk * n_panels // n_chunks, (chunk + 1) * n_panels // n_chunks):
            r = p * _PANEL_ROWS
            n_rows = min(_PANEL_ROWS, N - r)
            for i in range(n_rows):
                dequantize_row(ggml_type, w[r + i], rows[i])
            for k in range(K):
                for j in range(_PANEL_ROWS):
                    panel[k * _PANEL_ROWS + j] = rows[j, k]
            for t in range(0, T, _PANEL_TOKENS):
                _panel_tile(panel, x, t, tile_out)
                for i in range(min(_PANEL_TOKENS, T - t)):
                    for j in range(n_rows):
                        out[t + i, r + j] = tile_out[i, j]
