"""Decode-path products with int8 activations (the fast mode, as llama.cpp computes them).

Each activation row is quantized per 16 values: qx = round(x / dx), dx = max|x| / 127. Blocks of
16 rather than llama.cpp's 32 keep an outlier channel from flattening its neighbours, at no cost:
the integer products come out as two 16-lane halves anyway (dpbusd lanes 0-3 and 4-7).

A 32-weight block contributes, with dxv = the two dx of its halves,
    d_w * dxv * (q . qx)           integer products of unsigned q with signed qx (dpbusd)
and an offset term, with sum(xq) the sum of the dequantized qx:
    Q4_1, Q5_1  + m * sum(xq)       Q4_K, Q5_K, Q2_K  - dmin * min * sum(xq)
    Q6_K  - 32 d * scale * sum(xq)       Q3_K  - 4 d * scale * sum(xq)
(Q6_K, Q3_K and Q2_K scale each 16 weights: their sums are per half block.) Q4_0 and Q5_0, whose
offset (-8, -16) is the same for every weight, subtract it in the integers, lane by lane with
the sums of four qx: d_w * dxv * (q . qx - 8 * sum4(qx)). Q8_0 has none: its weights are signed
bytes, multiplied as |w| . (qx signed as w). So every block computes exactly w . xq, the true
weights times the quantized activations (the other signed weights go in as unsigned: nibble,
5 or 6 bits, 3 bits + 4). Using the exact sum(x) in the offsets
would look more precise and is not: the error would become d * q . (xq - x) over uncentred q
instead of w . (xq - x) over the centred weights, about twice as large on real activations.

    quantize_rows(x (T, K) f32) -> act = (qx (T, K) i8, dx (T, K/16) f32, xqsum16 (T, K/16) f32,
                                          dx8 (T, K/4) f32, xsum4 (T, K/4) i32)
    matmul_q8(w (N, row_bytes) u8, ggml_type, act, out (T, N) f32)
    rows_q8(ggml_type, w, r0, r1, act, out): the rows r0 <= r < r1 only
"""
import numpy as np
from numba import literally, njit, prange, types
from numba.extending import overload

from ..ggml_types import Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0
from ..simd import (
    hsum,
    itof,
    load_f16,
    load_f16_pair,
    load_f16_tail,
    load_f32,
    load_i8x16,
    q4_k_mins_x2,
    q4_k_scales_x2,
    vfma,
    vlane,
    vload,
    vmul,
    vsplat,
    vzero,
)
from ..simd_int8 import (
    babs,
    band,
    bor,
    bshl,
    bshr,
    bsign,
    dpbusd,
    hsum8,
    ishl8,
    isub8,
    itof8,
    izero8,
    load_bits32,
    load_f32x8,
    load_i32x8,
    load_nibbles,
    load_u8x32,
    vadd8,
    vfma8,
    vmul8,
    vsplat8,
    vsplat8x2,
    vzero8,
)
from ..views import ROW_RANGE, borrowed_row
from .dequant import q3_k_scale

_f32 = np.float32


@njit(cache=True, nogil=True)
def quantize_rows(x):
    """x (T, K) f32 -> the activations of the int8 products, a tuple (serial: decode-sized steps
    only, T <= matmul.INT8_ROW_TOKENS; a thread wake-up would cost more than the work):
        qx (T, K) i8        round(x / dx) per 16 values
        dx (T, K/16) f32    their scales, max|x| / 127
        xqsum16 (T, K/16)   the sum of each 16 dequantized values, dx * sum(qx)
        dx8 (T, K/4) f32    dx spread over the eight int32 lanes of a 32-value block's products
                            (lanes 0-3: the first 16 values' dx, 4-7: the second's)
        xsum4 (T, K/4) i32  the sum of each 4 qx: a block's products lane by lane, q . qx summed as
                            dpbusd sums them, for the offsets of Q4_0 and Q5_0 in integers
    """
    T, K = x.shape
    qx = np.empty((T, K), np.int8)
    dx = np.empty((T, K // 16), np.float32)
    xqsum16 = np.empty((T, K // 16), np.float32)
    dx8 = np.empty((T, K // 4), np.float32)
    xsum4 = np.empty((T, K // 4), np.int32)
    for t in range(T):
        for g in range(K // 16):
            amax = _f32(0.0)
            for j in range(g * 16, g * 16 + 16):
                amax = max(amax, abs(x[t, j]))
            d = amax / _f32(127.0)
            inv = _f32(1.0) / d if d > 0 else _f32(0.0)
            qs = 0
            for lane in range(g * 4, g * 4 + 4):
                s4 = 0
                for j in range(lane * 4, lane * 4 + 4):
                    q = np.int32(np.rint(x[t, j] * inv))
                    qx[t, j] = np.int8(q)
                    s4 += q
                xsum4[t, lane] = s4
                dx8[t, lane] = d
                qs += s4
            dx[t, g] = d
            xqsum16[t, g] = d * _f32(qs)
    return qx, dx, xqsum16, dx8, xsum4


@njit(cache=True, nogil=True)
def no_activations(T):
    """quantize_rows' tuple, empty: the placeholder where no product takes int8 activations."""
    return (np.empty((T, 0), np.int8), np.empty((T, 0), np.float32), np.empty((T, 0), np.float32),
            np.empty((T, 0), np.float32), np.empty((T, 0), np.int32))


# ------------------------------------------------------------------ per-row block updates
# Each returns (acc f32x8, offset f32) after adding 32-weight block b of `row`; the activation
# block is xq (u8x32), dxv (f32x8, dx8), xs4 (i32x8, xsum4) and the dequantized sums of its two
# halves.

@njit(cache=True, nogil=True, inline="always")
def _q4_1(row, b, xq, dxv, xs4, xqs_lo, xqs_hi, acc, offset):
    o = b * 20
    d, m = load_f16_pair(row, o)
    p = itof8(dpbusd(izero8(), load_nibbles(row, o + 4), xq))
    return vfma8(vmul8(p, dxv), vsplat8(d), acc), offset + m * (xqs_lo + xqs_hi)


@njit(cache=True, nogil=True, inline="always")
def _q4_0(row, b, xq, dxv, xs4, xqs_lo, xqs_hi, acc, offset):
    """The nibbles unsigned; their offset (-8 each) in the integers: q . qx - 8 * sum(qx), lane by lane."""
    o = b * 18
    p = isub8(dpbusd(izero8(), load_nibbles(row, o + 2), xq), ishl8(xs4, 3))
    return vfma8(itof8(p), vmul8(dxv, vsplat8(load_f16(row, o))), acc), offset


@njit(cache=True, nogil=True, inline="always")
def _q5_0(row, b, xq, dxv, xs4, xqs_lo, xqs_hi, acc, offset):
    """As Q4_0 with the fifth bit: q unsigned in 0..31, the offset -16 in the integers."""
    o = b * 22
    q = bor(load_nibbles(row, o + 6), load_bits32(row, o + 2, 16))
    p = isub8(dpbusd(izero8(), q, xq), ishl8(xs4, 4))
    return vfma8(itof8(p), vmul8(dxv, vsplat8(load_f16(row, o))), acc), offset


@njit(cache=True, nogil=True, inline="always")
def _q5_1(row, b, xq, dxv, xs4, xqs_lo, xqs_hi, acc, offset):
    o = b * 24
    d, m = load_f16_pair(row, o)
    q = bor(load_nibbles(row, o + 8), load_bits32(row, o + 4, 16))
    p = itof8(dpbusd(izero8(), q, xq))
    return vfma8(vmul8(p, dxv), vsplat8(d), acc), offset + m * (xqs_lo + xqs_hi)


@njit(cache=True, nogil=True, inline="always")
def _q8_0(row, b, xq, dxv, xs4, xqs_lo, xqs_hi, acc, offset):
    o = b * 34
    d = load_f16(row, o)
    w = load_u8x32(row, o + 2)                                             # signed bytes
    p = itof8(dpbusd(izero8(), babs(w), bsign(xq, w)))
    return vfma8(vmul8(p, dxv), vsplat8(d), acc), offset


@njit(cache=True, nogil=True, inline="always")
def _q3_k(row, b, xq, dxv, xs4, xqs_lo, xqs_hi, acc, offset):
    o = (b // 8) * 110                           # super-block; i = b % 8 is the hmask bit
    i = b % 8
    low = band(bshr(load_u8x32(row, o + 32 + 32 * (i // 4)), 2 * (i % 4)), 3)
    q = bor(low, bshl(band(bshr(load_u8x32(row, o), i), 1), 2))      # 3 bits: the value + 4
    d = load_f16_tail(row, o + 108)
    s_lo = d * _f32(q3_k_scale(row, o, 2 * i))
    s_hi = d * _f32(q3_k_scale(row, o, 2 * i + 1))
    p = itof8(dpbusd(izero8(), q, xq))
    acc = vfma8(vmul8(p, dxv), vsplat8x2(s_lo, s_hi), acc)
    return acc, offset - _f32(4.0) * (s_lo * xqs_lo + s_hi * xqs_hi)


@njit(cache=True, nogil=True, inline="always")
def _q2_k(row, b, xq, dxv, xs4, xqs_lo, xqs_hi, acc, offset):
    o = (b // 8) * 84
    i = b % 8
    q = band(bshr(load_u8x32(row, o + 16 + 32 * (i // 4)), 2 * (i % 4)), 3)
    d, dmin = load_f16_pair(row, o + 80)
    sc_lo = row[o + 2 * i]                       # scale | min << 4 of the two 16-weight groups
    sc_hi = row[o + 2 * i + 1]
    p = itof8(dpbusd(izero8(), q, xq))
    acc = vfma8(vmul8(p, dxv), vsplat8x2(d * _f32(sc_lo & 15), d * _f32(sc_hi & 15)), acc)
    return acc, offset - dmin * (_f32(sc_lo >> 4) * xqs_lo + _f32(sc_hi >> 4) * xqs_hi)


# ------------------------------------------------------------------ K-quant super-blocks
# Q4_K, Q5_K and Q6_K go a super-block (256 weights) at a time. Their scales are unpacked as one
# vector with a lane per 16 weights and multiplied by the sixteen activation scales dx up front, so
# each 32 weights cost one dpbusd, one conversion and one FMA (a block at a time, the scalar scale
# decode and the per-half scales cost more than the products); the offset terms are one vector FMA
# with the sixteen xqsum16 of the super-block. Each returns (acc0, acc1 f32x8, offset f32x16).

@njit(cache=True, nogil=True, inline="always")
def _pick(scales, g):
    """The f32x8 scale of a dpbusd over 32 weights: lanes 0-3 of 16-weight group g, 4-7 of g + 1."""
    return vsplat8x2(vlane(scales, g), vlane(scales, g + 1))


@njit(cache=True, nogil=True, inline="always")
def _q4_k_scales(row, o, sb, dx, xqsum16, offset):
    """A Q4_K/Q5_K super-block's product scales (d * scale * dx, a lane per 16 weights) and its
    offset term added to `offset` (dmin * min * xqsum16)."""
    d, dmin = load_f16_pair(row, o)
    scales = vmul(vmul(itof(q4_k_scales_x2(row, o)), vsplat(d)), vload(dx, sb * 16))
    return scales, vfma(vmul(itof(q4_k_mins_x2(row, o)), vsplat(dmin)), vload(xqsum16, sb * 16), offset)


@njit(cache=True, nogil=True, inline="always")
def _sub_block_pair(lo, hi, qx, at, scales, c, acc0, acc1):
    """Sub-blocks 2c (weights lo) and 2c + 1 (hi), 32 each, against the 64 activations at qx[at]."""
    acc0 = vfma8(itof8(dpbusd(izero8(), lo, load_u8x32(qx, at))), _pick(scales, 4 * c), acc0)
    acc1 = vfma8(itof8(dpbusd(izero8(), hi, load_u8x32(qx, at + 32))), _pick(scales, 4 * c + 2), acc1)
    return acc0, acc1


@njit(cache=True, nogil=True, inline="always")
def _q4_k_super(row, sb, qx, dx, xqsum16, acc0, acc1, offset):
    o = sb * 144
    scales, offset = _q4_k_scales(row, o, sb, dx, xqsum16, offset)
    for c in range(4):                          # 64 weights: sub-block 2c in the low nibbles, 2c+1 high
        packed = load_u8x32(row, o + 16 + 32 * c)
        acc0, acc1 = _sub_block_pair(band(packed, 15), bshr(packed, 4), qx, sb * 256 + 64 * c, scales, c, acc0, acc1)
    return acc0, acc1, offset


@njit(cache=True, nogil=True, inline="always")
def _q5_k_super(row, sb, qx, dx, xqsum16, acc0, acc1, offset):
    """As Q4_K; the fifth bit of sub-block j is bit j of the 32 qh bytes."""
    o = sb * 176
    scales, offset = _q4_k_scales(row, o, sb, dx, xqsum16, offset)
    qh = load_u8x32(row, o + 16)
    for c in range(4):
        packed = load_u8x32(row, o + 48 + 32 * c)
        lo = bor(band(packed, 15), bshl(band(bshr(qh, 2 * c), 1), 4))
        hi = bor(bshr(packed, 4), bshl(band(bshr(qh, 2 * c + 1), 1), 4))
        acc0, acc1 = _sub_block_pair(lo, hi, qx, sb * 256 + 64 * c, scales, c, acc0, acc1)
    return acc0, acc1, offset


@njit(cache=True, nogil=True, inline="always")
def _q6_k_part(ql, qh, part, qx, at, scales, g, acc):
    """Part `part` of a 128-weight half (32 weights at qx[at]): 6 bits, the value + 32."""
    low = band(ql, 15) if part < 2 else bshr(ql, 4)
    q = bor(low, bshl(band(bshr(qh, 2 * part), 3), 4))
    return vfma8(itof8(dpbusd(izero8(), q, load_u8x32(qx, at))), _pick(scales, g), acc)


@njit(cache=True, nogil=True, inline="always")
def _q6_k_super(row, sb, qx, dx, xqsum16, acc0, acc1, offset):
    """Sixteen int8 scales, one per 16 weights in order; weight = d * scale * (q - 32)."""
    o = sb * 210
    k = sb * 256
    wscale = vmul(itof(load_i8x16(row, o + 192)), vsplat(load_f16_tail(row, o + 208)))
    scales = vmul(wscale, vload(dx, sb * 16))
    offset = vfma(vmul(wscale, vsplat(32.0)), vload(xqsum16, sb * 16), offset)
    for half in range(2):
        qh = load_u8x32(row, o + 128 + 32 * half)
        ql0 = load_u8x32(row, o + 64 * half)
        ql1 = load_u8x32(row, o + 64 * half + 32)
        at = k + 128 * half
        acc0 = _q6_k_part(ql0, qh, 0, qx, at, scales, 8 * half, acc0)
        acc1 = _q6_k_part(ql1, qh, 1, qx, at + 32, scales, 8 * half + 2, acc1)
        acc0 = _q6_k_part(ql0, qh, 2, qx, at + 64, scales, 8 * half + 4, acc0)
        acc1 = _q6_k_part(ql1, qh, 3, qx, at + 96, scales, 8 * half + 6, acc1)
    return acc0, acc1, offset


_SUPER_BLOCK_OF_TYPE = {Q4_K: _q4_k_super, Q5_K: _q5_k_super, Q6_K: _q6_k_super}


def _super_block(ggml_type, row, sb, qx, dx, xqsum16, acc0, acc1, offset):
    raise TypeError("njit code only")


@overload(_super_block, inline="always", prefer_literal=True)
def _super_block_of_type(ggml_type, row, sb, qx, dx, xqsum16, acc0, acc1, offset):
    if not isinstance(ggml_type, types.IntegerLiteral):
        return None
    update = _SUPER_BLOCK_OF_TYPE[ggml_type.literal_value]

    def impl(ggml_type, row, sb, qx, dx, xqsum16, acc0, acc1, offset):
        return update(row, sb, qx, dx, xqsum16, acc0, acc1, offset)
    return impl


@njit(cache=True, nogil=True, inline="always")
def _row_dot_k(ggml_type, row, qx, dx, xqsum16):
    """As _row_dot for Q4_K, Q5_K and Q6_K, a super-block at a time."""
    acc0 = vzero8()
    acc1 = vzero8()
    offset = vzero()
    for sb in range(qx.shape[0] // 256):
        acc0, acc1, offset = _super_block(ggml_type, row, sb, qx, dx, xqsum16, acc0, acc1, offset)
    return hsum8(vadd8(acc0, acc1)) - hsum(offset)


# ------------------------------------------------------------------ rows

_BLOCK_OF_TYPE = {Q4_0: _q4_0, Q4_1: _q4_1, Q5_0: _q5_0, Q5_1: _q5_1, Q8_0: _q8_0, Q3_K: _q3_k, Q2_K: _q2_k}


def _block(ggml_type, row, b, xq, dxv, xs4, xqs_lo, xqs_hi, acc, offset):
    raise TypeError("njit code only")


@overload(_block, inline="always", prefer_literal=True)
def _block_of_type(ggml_type, row, b, xq, dxv, xs4, xqs_lo, xqs_hi, acc, offset):
    if not isinstance(ggml_type, types.IntegerLiteral):
        return None
    update = _BLOCK_OF_TYPE[ggml_type.literal_value]

    def impl(ggml_type, row, b, xq, dxv, xs4, xqs_lo, xqs_hi, acc, offset):
        return update(row, b, xq, dxv, xs4, xqs_lo, xqs_hi, acc, offset)
    return impl


@njit(cache=True, nogil=True, inline="always")
def _activation_block(ggml_type, row, b, qx, dx8, xsum4, xqsum16, acc, offset):
    """Weight block b against activation block b (load_f32: no negative-index wraparound code)."""
    return _block(ggml_type, row, b, load_u8x32(qx, b * 32), load_f32x8(dx8, b * 8), load_i32x8(xsum4, b * 8),
                  load_f32(xqsum16, 2 * b), load_f32(xqsum16, 2 * b + 1), acc, offset)


@njit(cache=True, nogil=True, inline="always")
def _row_dot(ggml_type, row, qx, dx8, xsum4, xqsum16):
    """row . x for one weight row and one quantized activation row (quantize_rows' qx, dx8, xsum4,
    xqsum16 of one token). Two chains over alternate blocks hide the FMA latency."""
    a0 = vzero8()
    a1 = vzero8()
    c0 = _f32(0.0)
    c1 = _f32(0.0)
    n_blocks = qx.shape[0] // 32
    for b in range(0, n_blocks - 1, 2):
        a0, c0 = _activation_block(ggml_type, row, b, qx, dx8, xsum4, xqsum16, a0, c0)
        a1, c1 = _activation_block(ggml_type, row, b + 1, qx, dx8, xsum4, xqsum16, a1, c1)
    if n_blocks % 2:
        a0, c0 = _activation_block(ggml_type, row, n_blocks - 1, qx, dx8, xsum4, xqsum16, a0, c0)
    return hsum8(vadd8(a0, a1)) + c0 + c1


@njit(cache=True, nogil=True, inline="always")
def has_int8_kernel(ggml_type):
    """ggml_type in INT8_KERNEL_TYPES: rows_q8 has a kernel for it."""
    return (ggml_type == Q4_0 or ggml_type == Q4_1 or ggml_type == Q5_0 or ggml_type == Q5_1 or ggml_type == Q8_0
            or ggml_type == Q2_K or ggml_type == Q3_K or ggml_type == Q4_K or ggml_type == Q5_K or ggml_type == Q6_K)


@njit(cache=True, nogil=True, inline="always")
def int8_pays(ggml_type):
    """ggml_type in INT8_ACTIVATION_TYPES: the fast mode's dispatch (its int8 kernel is the faster one)."""
    return has_int8_kernel(ggml_type)


def _row_dot_of(ggml_type, row, act, t):
    raise TypeError("njit code only")


@overload(_row_dot_of, inline="always", prefer_literal=True)
def _row_dot_of_type(ggml_type, row, act, t):
    """row . x[t] (act: quantize_rows' tuple): _row_dot_k for the K-quants, _row_dot for the
    others, only the literal type's code compiled (an if per type inlined here would have numba
    type every type's code)."""
    if not isinstance(ggml_type, types.IntegerLiteral):
        return None
    if ggml_type.literal_value in (Q4_K, Q5_K, Q6_K):
        def impl(ggml_type, row, act, t):
            qx, dx, xqsum16, dx8, xsum4 = act
            return _row_dot_k(ggml_type, row, borrowed_row(qx, t), borrowed_row(dx, t), borrowed_row(xqsum16, t))
    else:
        def impl(ggml_type, row, act, t):
            qx, dx, xqsum16, dx8, xsum4 = act
            return _row_dot(ggml_type, row, borrowed_row(qx, t), borrowed_row(dx8, t), borrowed_row(xsum4, t),
                            borrowed_row(xqsum16, t))
    return impl


@njit(cache=True, nogil=True)
def _rows_q8_of(ggml_type, w, r0, r1, act, out):
    """out[t, r] = w[r] . x[t] for the rows r0 <= r < r1 and every token t.

    ggml_type is a compile-time constant (`literally`): each type gets its own loop with the row
    product inlined, no type test inside, and one call per range of rows, not per row (a call and
    its arguments' reference counts per 28-block row cost a third of the product)."""
    literally(ggml_type)
    for r in range(r0, r1):
        row = borrowed_row(w, r)
        for t in range(out.shape[0]):
            out[t, r] = _row_dot_of(ggml_type, row, act, t)


@njit(cache=True, nogil=True, inline="always")
def rows_q8(ggml_type, w, r0, r1, act, out):
    """out[:, r0:r1] = x @ w[r0:r1]^T with act = quantize_rows(x); the type chosen at run time,
    once per range of rows."""
    if ggml_type == Q4_1:
        _rows_q8_of(Q4_1, w, r0, r1, act, out)
    elif ggml_type == Q5_0:
        _rows_q8_of(Q5_0, w, r0, r1, act, out)
    elif ggml_type == Q5_1:
        _rows_q8_of(Q5_1, w, r0, r1, act, out)
    elif ggml_type == Q8_0:
        _rows_q8_of(Q8_0, w, r0, r1, act, out)
    elif ggml_type == Q4_K:
        _rows_q8_of(Q4_K, w, r0, r1, act, out)
    elif ggml_type == Q6_K:
        _rows_q8_of(Q6_K, w, r0, r1, act, out)
    elif ggml_type == Q5_K:
        _rows_q8_of(Q5_K, w, r0, r1, act, out)
    elif ggml_type == Q3_K:
        _rows_q8_of(Q3_K, w, r0, r1, act, out)
    elif ggml_type == Q2_K:
        _rows_q8_of(Q2_K, w, r0, r1, act, out)
    else:
        _rows_q8_of(Q4_0, w, r0, r1, act, out)


@njit(cache=True, nogil=True, parallel=True)
def matmul_q8(w, ggml_type, act, out):
    """out (T, N) = x @ W^T with act = quantize_rows(x); ggml_type in INT8_KERNEL_TYPES.

    Ranges of ROW_RANGE rows in parallel, each row streamed once for all tokens: tiles of four
    interleaved rows would share the activation loads but read memory in an order the
    prefetchers follow poorly, and decode reads its weights from DRAM (142 vs 108 tokens/s for
    SmolLM2)."""
    n_ranges = (w.shape[0] + ROW_RANGE - 1) // ROW_RANGE
    for i in prange(n_ranges):
        rows_q8(ggml_type, w, i * ROW_RANGE, min(i * ROW_RANGE + ROW_RANGE, w.shape[0]), act, out)
