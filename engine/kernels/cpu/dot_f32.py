"""One weight row in its GGML blocks dotted with float32 activations, decoded in registers (CPU, numba).

    dot_row(ggml_type, row (row_bytes,) u8, x (K,) f32, xsum (K/32 + XSUM_PAD,) f32) -> f32
    xsum: the sums of x per 32, then XSUM_PAD zeros (matmul_f32.block_sums makes it)
    rows_f32(ggml_type, w (N, row_bytes) u8, r0, r1, x (T, K), xsum (T, .), out (T, N)):
        out[t, r] = w[r] . x[t] for r0 <= r < r1: dot_row for one token; for several, four
        tokens per block decoded once (dequant.block_weights), the tiles' arithmetic bit for bit

One `dot_<type>` per type, chosen per row by dot_row inside rows_f32 (the exact mode's decode path:
matmul_f32.matmul_rows_f32, projections). A block's contribution is d * (q . x) [+ m * sum(x)]:
the dequantized row dotted with x up to float rounding.
"""
import numpy as np
from numba import njit

from ..ggml_types import BF16, F16, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0
from ..simd import (
    hsum,
    iand,
    ior,
    ishl,
    ishr,
    isub,
    itof,
    load_bf16x16,
    load_f16,
    load_f16_pair,
    load_f16_tail,
    load_f16x16,
    load_f32,
    load_i8x16,
    load_u8x16,
    q4_k_mins,
    q4_k_scales,
    store_hsum4,
    vadd,
    vfma,
    vlane,
    vload,
    vmul,
    vsplat,
    vsub,
    vzero,
)
from ..views import borrowed_row
from .dequant import (
    block_weights,
    crumb_lanes,
    has_superblock_scales,
    q3_k_lanes,
    q3_k_scale,
    q5_lanes,
    q6_k_lanes,
    store_superblock_scales,
    stored_scale_pair,
    superblock_block_weights,
)

_f32 = np.float32
XSUM_PAD = 8      # the K-quants read a super-block's eight block sums as one 16-lane vector


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
    """The super-block's eight scales and mins are unpacked in one vector each (q4_k_scales), not
    byte by byte per sub-block: the scalar decode cost as many instructions as the products. The
    mins' term is one vector product with the eight block sums (xsum padded by XSUM_PAD)."""
    acc0 = vzero()
    acc1 = vzero()                                      # two chains: even and odd sub-blocks
    mins = vzero()
    for sb in range(x.shape[0] // 256):
        o = sb * 144
        d, dmin = load_f16_pair(row, o)
        scales = vmul(itof(q4_k_scales(row, o)), vsplat(d))
        mins = vfma(vmul(itof(q4_k_mins(row, o)), vsplat(dmin)), vload(xsum, sb * 8), mins)
        for c in range(4):                              # 64 weights: sub-blocks 2c and 2c+1
            k = sb * 256 + c * 64
            qa = load_u8x16(row, o + 16 + c * 32)
            qb = load_u8x16(row, o + 32 + c * 32)
            s = vmul(itof(iand(qa, 15)), vload(x, k))
            s = vfma(itof(iand(qb, 15)), vload(x, k + 16), s)
            acc0 = vfma(vsplat(vlane(scales, 2 * c)), s, acc0)
            s = vmul(itof(ishr(qa, 4)), vload(x, k + 32))
            s = vfma(itof(ishr(qb, 4)), vload(x, k + 48), s)
            acc1 = vfma(vsplat(vlane(scales, 2 * c + 1)), s, acc1)
    return hsum(vadd(acc0, acc1)) - hsum(mins)


@njit(cache=True, nogil=True, inline="always")
def dot_q6_k(row, x, xsum):
    """The sixteen int8 scales of a super-block become one float vector (d * scale) up front."""
    acc0 = vzero()
    acc1 = vzero()
    for sb in range(x.shape[0] // 256):
        o = sb * 210
        scales = vmul(itof(load_i8x16(row, o + 192)), vsplat(load_f16_tail(row, o + 208)))
        for half in range(2):
            for chunk in range(2):
                q1, q2, q3, q4 = q6_k_lanes(row, o, half, chunk)
                k = sb * 256 + half * 128 + chunk * 16
                g = 8 * half + chunk                    # the scale of this lane group
                acc0 = vfma(vsplat(vlane(scales, g)), vmul(itof(q1), vload(x, k)), acc0)
                acc1 = vfma(vsplat(vlane(scales, g + 2)), vmul(itof(q2), vload(x, k + 32)), acc1)
                acc0 = vfma(vsplat(vlane(scales, g + 4)), vmul(itof(q3), vload(x, k + 64)), acc0)
                acc1 = vfma(vsplat(vlane(scales, g + 6)), vmul(itof(q4), vload(x, k + 96)), acc1)
    return hsum(vadd(acc0, acc1))


@njit(cache=True, nogil=True, inline="always")
def _fifth_bits(qh, j):
    """16 at lanes whose qh byte has bit j set (the fifth bit of Q5_K sub-block j), else 0."""
    return iand(ishr(ishl(qh, 4), j), 16)


@njit(cache=True, nogil=True, inline="always")
def dot_q5_k(row, x, xsum):
    """As dot_q4_k; the two 16-byte halves of qh are loaded once per super-block."""
    acc0 = vzero()
    acc1 = vzero()
    mins = vzero()
    for sb in range(x.shape[0] // 256):
        o = sb * 176
        d, dmin = load_f16_pair(row, o)
        scales = vmul(itof(q4_k_scales(row, o)), vsplat(d))
        mins = vfma(vmul(itof(q4_k_mins(row, o)), vsplat(dmin)), vload(xsum, sb * 8), mins)
        h0 = load_u8x16(row, o + 16)
        h1 = load_u8x16(row, o + 32)
        for c in range(4):                              # 64 weights: sub-blocks 2c and 2c+1
            k = sb * 256 + c * 64
            qa = load_u8x16(row, o + 48 + c * 32)
            qb = load_u8x16(row, o + 64 + c * 32)
            s = vmul(itof(ior(iand(qa, 15), _fifth_bits(h0, 2 * c))), vload(x, k))
            s = vfma(itof(ior(iand(qb, 15), _fifth_bits(h1, 2 * c))), vload(x, k + 16), s)
            acc0 = vfma(vsplat(vlane(scales, 2 * c)), s, acc0)
            s = vmul(itof(ior(ishr(qa, 4), _fifth_bits(h0, 2 * c + 1))), vload(x, k + 32))
            s = vfma(itof(ior(ishr(qb, 4), _fifth_bits(h1, 2 * c + 1))), vload(x, k + 48), s)
            acc1 = vfma(vsplat(vlane(scales, 2 * c + 1)), s, acc1)
    return hsum(vadd(acc0, acc1)) - hsum(mins)


@njit(cache=True, nogil=True, inline="always")
def dot_q3_k(row, x, xsum):
    acc = vzero()
    for sb in range(x.shape[0] // 256):
        o = sb * 110
        d = load_f16_tail(row, o + 108)
        for g in range(16):                              # 16-weight groups: 32i + 16*part
            q = q3_k_lanes(row, o, g // 2, g % 2)
            acc = vfma(vsplat(d * _f32(q3_k_scale(row, o, g))), vmul(itof(q), vload(x, sb * 256 + g * 16)), acc)
    return hsum(acc)


@njit(cache=True, nogil=True, inline="always")
def dot_q2_k(row, x, xsum):
    """Mins per 16 weights, finer than xsum's blocks of 32: each weight is formed in full (as the
    reference does) and dotted, which also spares the cancellation of two large sums."""
    acc = vzero()
    for sb in range(x.shape[0] // 256):
        o = sb * 84
        d, dmin = load_f16_pair(row, o + 80)
        for g in range(16):                              # 16-weight groups: 32i + 16*part
            sc = row[o + g]
            w = vsub(vmul(vsplat(d * _f32(sc & 15)), itof(crumb_lanes(row, o + 16, g // 2, g % 2))),
                     vsplat(dmin * _f32(sc >> 4)))
            acc = vfma(w, vload(x, sb * 256 + g * 16), acc)
    return hsum(acc)


@njit(cache=True, nogil=True, inline="always")
def dot_f16(row, x, xsum):
    acc = vzero()
    for k in range(0, x.shape[0], 16):
        acc = vfma(load_f16x16(row, 2 * k), vload(x, k), acc)
    return hsum(acc)


@njit(cache=True, nogil=True, inline="always")
def dot_bf16(row, x, xsum):
    acc = vzero()
    for k in range(0, x.shape[0], 16):
        acc = vfma(load_bf16x16(row, 2 * k), vload(x, k), acc)
    return hsum(acc)


@njit(cache=True, nogil=True, inline="always")
def dot_f32(row, x, xsum):
    acc = vzero()
    for k in range(0, x.shape[0], 16):
        acc = vfma(vload(row, 4 * k), vload(x, k), acc)
    return hsum(acc)


@njit(cache=True, nogil=True, inline="always")
def dot_row(ggml_type, row, x, xsum):
    """row . x for one weight row of any supported type; the types most matrices use first."""
    if ggml_type == Q4_K:
        return dot_q4_k(row, x, xsum)
    if ggml_type == Q6_K:
        return dot_q6_k(row, x, xsum)
    if ggml_type == Q5_0:
        return dot_q5_0(row, x, xsum)
    if ggml_type == Q8_0:
        return dot_q8_0(row, x, xsum)
    if ggml_type == Q4_1:
        return dot_q4_1(row, x, xsum)
    if ggml_type == Q4_0:
        return dot_q4_0(row, x, xsum)
    if ggml_type == Q5_K:
        return dot_q5_k(row, x, xsum)
    if ggml_type == Q3_K:
        return dot_q3_k(row, x, xsum)
    if ggml_type == Q2_K:
        return dot_q2_k(row, x, xsum)
    if ggml_type == Q5_1:
        return dot_q5_1(row, x, xsum)
    if ggml_type == F16:
        return dot_f16(row, x, xsum)
    if ggml_type == BF16:
        return dot_bf16(row, x, xsum)
    return dot_f32(row, x, xsum)


@njit(cache=True, nogil=True, inline="always")
def _fma_tokens4(k, lo, hi, x0, x1, x2, x3, pair, a0, a1, a2, a3):
    """The four tokens' accumulators after the weights (lo, hi) of x[k .. k+31]."""
    a0 = vfma(vload(x0, k + 16), hi, vfma(vload(x0, k), lo, a0))
    a1 = vfma(vload(x1, k + 16), hi, vfma(vload(x1, k), lo, a1))
    if not pair:
        a2 = vfma(vload(x2, k + 16), hi, vfma(vload(x2, k), lo, a2))
        a3 = vfma(vload(x3, k + 16), hi, vfma(vload(x3, k), lo, a3))
    return a0, a1, a2, a3


@njit(cache=True, nogil=True, inline="always")
def _dot_tokens4(ggml_type, row, x0, x1, x2, x3, pair, sums, scratch):
    """sums[0:4] = row . x0, .. row . x3, the row decoded once per 32-weight block for the four
    tokens (dequant.block_weights; Q4_K/Q5_K/Q6_K scales once per super-block, where decoding them
    per block cost a Q4_K row 10-20 % more at 2-4 tokens); with `pair`, x0 and x1 only (sums 2
    and 3 are left zero).
    Each sum is matmul_f32's tile arithmetic (one fma chain over k, then store_hsum4's tree), so a
    token gets the same bits here as on the tiles."""
    a0 = vzero()
    a1 = vzero()
    a2 = vzero()
    a3 = vzero()
    if has_superblock_scales(ggml_type):
        for sb in range(x0.shape[0] // 256):
            store_superblock_scales(ggml_type, row, sb, scratch)
            for j in range(8):
                first, second = stored_scale_pair(ggml_type, scratch, j)
                lo, hi = superblock_block_weights(ggml_type, row, sb, j, first, second)
                a0, a1, a2, a3 = _fma_tokens4(256 * sb + 32 * j, lo, hi, x0, x1, x2, x3, pair, a0, a1, a2, a3)
    else:
        for b in range(x0.shape[0] // 32):
            lo, hi = block_weights(ggml_type, row, b)
            a0, a1, a2, a3 = _fma_tokens4(32 * b, lo, hi, x0, x1, x2, x3, pair, a0, a1, a2, a3)
    store_hsum4(sums, 0, a0, a1, a2, a3)


@njit(cache=True, nogil=True, inline="always")
def _rows_tokens4(ggml_type, w, r0, r1, x, out):
    """rows_f32 for two tokens or more: groups of four tokens (a group of fewer repeats its last
    token), each row's blocks decoded once per group (_dot_tokens4)."""
    T = x.shape[0]
    sums = np.empty(4, np.float32)
    scratch = np.empty(32, np.float32)
    for t0 in range(0, T, 4):
        n = min(4, T - t0)
        x0 = borrowed_row(x, t0)
        x1 = borrowed_row(x, t0 + min(1, n - 1))
        x2 = borrowed_row(x, t0 + min(2, n - 1))
        x3 = borrowed_row(x, t0 + min(3, n - 1))
        for r in range(r0, r1):
            _dot_tokens4(ggml_type, borrowed_row(w, r), x0, x1, x2, x3, n <= 2, sums, scratch)
            for i in range(n):
                out[t0 + i, r] = sums[i]


@njit(cache=True, nogil=True)
def rows_f32(ggml_type, w, r0, r1, x, xsum, out):
    """out[t, r] = w[r] . x[t] for the rows r0 <= r < r1 and every token t: one call per range of
    rows, not per row (a call and its arguments' reference counts per short row cost as much as a
    third of the product). One function for every type, the type tested per row: a function per
    type (a literal type each) compiled for minutes longer at start.

    One token: dot_row, the row decoded in registers and dotted in one pass. Several (small
    batches, speculative verification): four tokens per decoded block (_rows_tokens4), where
    decoding the row again per token cost a 3-token step 2.5-3x one token on an AVX2-only EPYC;
    Q5_0 and Q8_0 in a copy of that loop of their own (below)."""
    T = x.shape[0]
    if T == 1:
        xt = borrowed_row(x, 0)
        xs = borrowed_row(xsum, 0)
        for r in range(r0, r1):
            out[0, r] = dot_row(ggml_type, borrowed_row(w, r), xt, xs)
        return
    # Q5_0 and Q8_0 (most of the default model) pass their type as a constant: inlined, LLVM folds
    # block_weights' type tests out of the block loop (tested per block, they cost a 2-token row
    # 1.3x (Q5_0) to 2x (Q8_0)). Only these two: numba still types and lowers every type's code in
    # each copy, and six copies here (and six in dequantize_row) took a cold start from 180 to 359 s.
    if ggml_type == Q5_0:
        _rows_tokens4(Q5_0, w, r0, r1, x, out)
    elif ggml_type == Q8_0:
        _rows_tokens4(Q8_0, w, r0, r1, x, out)
    else:
        _rows_tokens4(ggml_type, w, r0, r1, x, out)
