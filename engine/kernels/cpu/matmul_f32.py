"""Products with float32 activations over weights in their GGML blocks (CPU, numba).

- matmul_rows_f32: every weight row is decoded in registers and dotted with each token (`dot_<type>`);
  the row stays in L1 across the tokens. For decode in the exact mode.
- matmul_tiles_f32: rows are dequantized four at a time into an f32 tile, then a 4x4 register-blocked
  product runs over the tokens, so decoding costs once per row, not per token. For batches.

A block's contribution is d * (q . x) [+ m * sum(x)]: the dequantized row dotted with x up to
float rounding.
"""
import numpy as np
from numba import njit, prange

from ..ggml_types import F16, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q6_K, Q8_0
from ..simd import (
    hsum,
    iand,
    ishr,
    isub,
    itof,
    load_f16,
    load_f16_pair,
    load_f16_tail,
    load_f16x16,
    load_f32,
    load_i8x16,
    load_u8x16,
    store_hsum4,
    vadd,
    vfma,
    vload,
    vmul,
    vsplat,
    vzero,
)
from .dequant import dequantize_row, q4_k_scale_min, q5_lanes, q6_k_lanes, signed_byte

_ROW_TILE = 4
_CHUNKS = 32          # parallel chunks of a batch product: a few per thread, each with its own scratch
_f32 = np.float32


# ----------------------------------------------------------------------------- row . x products
# row (row_bytes,) u8 one weight row in its blocks; x (K,) f32; xsum (K/32,) f32 sums of x per 32.

@njit(cache=True, nogil=True, inline="always")
def dot_q4_0(row, x, xsum):
    acc = vzero()
    correction = _f32(0.0)
    for b in range(x.shape[0] // 32):
        o = b * 18
        k = b * 32
        q = load_u8x16(row, o + 2)
        s = vmul(itof(iand(q, 15)), vload(x, k))
        s = vfma(itof(ishr(q, 4)), vload(x, k + 16), s)
        d = load_f16(row, o)
        acc = vfma(vsplat(d), s, acc)
        correction += d * _f32(8.0) * xsum[b]        # the -8 offset of every nibble
    return hsum(acc) - correction


@njit(cache=True, nogil=True, inline="always")
def _q4_1_block(row, b, x, xsum, acc, mins):
    o = b * 20
    k = b * 32
    q = load_u8x16(row, o + 4)
    s = vmul(itof(iand(q, 15)), vload(x, k))
    s = vfma(itof(ishr(q, 4)), vload(x, k + 16), s)
    d, m = load_f16_pair(row, o)
    return vfma(vsplat(d), s, acc), mins + m * load_f32(xsum, b)


@njit(cache=True, nogil=True, inline="always")
def dot_q4_1(row, x, xsum):
    acc0 = vzero()
    acc1 = vzero()                                     # two chains hide the FMA latency
    mins0 = _f32(0.0)
    mins1 = _f32(0.0)
    nblk = x.shape[0] // 32
    for b in range(0, nblk - 1, 2):
        acc0, mins0 = _q4_1_block(row, b, x, xsum, acc0, mins0)
        acc1, mins1 = _q4_1_block(row, b + 1, x, xsum, acc1, mins1)
    if nblk % 2:
        acc0, mins0 = _q4_1_block(row, nblk - 1, x, xsum, acc0, mins0)
    return hsum(vadd(acc0, acc1)) + mins0 + mins1


@njit(cache=True, nogil=True, inline="always")
def _q5_0_block(row, b, x, acc):
    o = b * 22
    k = b * 32
    lo, hi = q5_lanes(row, o, 22)
    s = vmul(itof(isub(lo, 16)), vload(x, k))          # the offset inside the lanes: no xsum
    s = vfma(itof(isub(hi, 16)), vload(x, k + 16), s)
    return vfma(vsplat(load_f16(row, o)), s, acc)


@njit(cache=True, nogil=True, inline="always")
def dot_q5_0(row, x, xsum):
    acc0 = vzero()
    acc1 = vzero()                                     # two chains hide the FMA latency
    nblk = x.shape[0] // 32
    for b in range(0, nblk - 1, 2):
        acc0 = _q5_0_block(row, b, x, acc0)
        acc1 = _q5_0_block(row, b + 1, x, acc1)
    if nblk % 2:
        acc0 = _q5_0_block(row, nblk - 1, x, acc0)
    return hsum(vadd(acc0, acc1))


@njit(cache=True, nogil=True, inline="always")
def dot_q5_1(row, x, xsum):
    acc = vzero()
    mins = _f32(0.0)
    for b in range(x.shape[0] // 32):
        o = b * 24
        k = b * 32
        lo, hi = q5_lanes(row, o, 24)
        s = vmul(itof(lo), vload(x, k))
        s = vfma(itof(hi), vload(x, k + 16), s)
        d, m = load_f16_pair(row, o)
        acc = vfma(vsplat(d), s, acc)
        mins += m * load_f32(xsum, b)
    return hsum(acc) + mins


@njit(cache=True, nogil=True, inline="always")
def dot_q8_0(row, x, xsum):
    acc0 = vzero()
    acc1 = vzero()
    for b in range(x.shape[0] // 32):
        o = b * 34
        k = b * 32
        d = vsplat(load_f16(row, o))
        acc0 = vfma(d, vmul(itof(load_i8x16(row, o + 2)), vload(x, k)), acc0)
        acc1 = vfma(d, vmul(itof(load_i8x16(row, o + 18)), vload(x, k + 16)), acc1)
    return hsum(vadd(acc0, acc1))


@njit(cache=True, nogil=True, inline="always")
def dot_q4_k(row, x, xsum):
    acc = vzero()
    mins = _f32(0.0)
    for sb in range(x.shape[0] // 256):
        o = sb * 144
        d, dmin = load_f16_pair(row, o)
        for c in range(4):                              # 64 weights: sub-blocks 2c and 2c+1
            k = sb * 256 + c * 64
            qa = load_u8x16(row, o + 16 + c * 32)
            qb = load_u8x16(row, o + 32 + c * 32)
            sc, m = q4_k_scale_min(row, o, 2 * c)
            s = vmul(itof(iand(qa, 15)), vload(x, k))
            s = vfma(itof(iand(qb, 15)), vload(x, k + 16), s)
            acc = vfma(vsplat(d * _f32(sc)), s, acc)
            mins += dmin * _f32(m) * xsum[k // 32]
            sc, m = q4_k_scale_min(row, o, 2 * c + 1)
            s = vmul(itof(ishr(qa, 4)), vload(x, k + 32))
            s = vfma(itof(ishr(qb, 4)), vload(x, k + 48), s)
            acc = vfma(vsplat(d * _f32(sc)), s, acc)
            mins += dmin * _f32(m) * xsum[k // 32 + 1]
    return hsum(acc) - mins


@njit(cache=True, nogil=True, inline="always")
def dot_q6_k(row, x, xsum):
    acc = vzero()
    for sb in range(x.shape[0] // 256):
        o = sb * 210
        d = load_f16_tail(row, o + 208)
        for half in range(2):
            for chunk in range(2):
                q1, q2, q3, q4 = q6_k_lanes(row, o, half, chunk)
                k = sb * 256 + half * 128 + chunk * 16
                g = o + 192 + 8 * half + chunk          # int8 scale of this lane group
                acc = vfma(vsplat(d * _f32(signed_byte(row[g]))), vmul(itof(q1), vload(x, k)), acc)
                acc = vfma(vsplat(d * _f32(signed_byte(row[g + 2]))), vmul(itof(q2), vload(x, k + 32)), acc)
                acc = vfma(vsplat(d * _f32(signed_byte(row[g + 4]))), vmul(itof(q3), vload(x, k + 64)), acc)
                acc = vfma(vsplat(d * _f32(signed_byte(row[g + 6]))), vmul(itof(q4), vload(x, k + 96)), acc)
    return hsum(acc)


@njit(cache=True, nogil=True, inline="always")
def dot_f16(row, x, xsum):
    acc = vzero()
    for k in range(0, x.shape[0], 16):
        acc = vfma(load_f16x16(row, 2 * k), vload(x, k), acc)
    return hsum(acc)


@njit(cache=True, nogil=True, inline="always")
def dot_f32(row, x, xsum):
    acc = vzero()
    for k in range(0, x.shape[0], 16):
        acc = vfma(vload(row, 4 * k), vload(x, k), acc)
    return hsum(acc)


@njit(cache=True, nogil=True)
def dot_row(ggml_type, row, x, xsum):
    if ggml_type == Q4_1:
        return dot_q4_1(row, x, xsum)
    if ggml_type == Q5_0:
        return dot_q5_0(row, x, xsum)
    if ggml_type == Q8_0:
        return dot_q8_0(row, x, xsum)
    if ggml_type == Q4_K:
        return dot_q4_k(row, x, xsum)
    if ggml_type == Q6_K:
        return dot_q6_k(row, x, xsum)
    if ggml_type == Q4_0:
        return dot_q4_0(row, x, xsum)
    if ggml_type == Q5_1:
        return dot_q5_1(row, x, xsum)
    if ggml_type == F16:
        return dot_f16(row, x, xsum)
    return dot_f32(row, x, xsum)


# ----------------------------------------------------------------------------- products

@njit(cache=True, nogil=True)
def block_sums(x, xsum):
    """x (T, K) f32 -> xsum (T, K/32): the sum of each 32-wide block of each row."""
    for t in range(x.shape[0]):
        for b in range(x.shape[1] // 32):
            xsum[t, b] = hsum(vadd(vload(x[t], b * 32), vload(x[t], b * 32 + 16)))


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
