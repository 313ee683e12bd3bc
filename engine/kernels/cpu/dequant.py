"""Decoding GGML blocks to float32 (CPU, numba): whole rows, and the pieces other kernels share.

dequantize_row is bit-exact with engine.quants: the same float operations in the same order
(no fused multiply-add), so the batch path multiplies exactly the reference weights.
"""
import numpy as np
from numba import njit

from ..ggml_types import F16, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q6_K, Q8_0
from ..simd import (
    iand,
    ior,
    ishl,
    ishr,
    isub,
    itof,
    load_bits16,
    load_f16,
    load_f16_tail,
    load_f16x16,
    load_i8x16,
    load_u8x16,
    vadd,
    vload,
    vmul,
    vsplat,
    vstore,
    vsub,
)

_f32 = np.float32


@njit(cache=True, nogil=True, inline="always")
def q4_k_scale_min(row, o, j):
    """6-bit (scale, min) of sub-block j of the Q4_K super-block at byte o."""
    s = o + 4
    if j < 4:
        return row[s + j] & 63, row[s + j + 4] & 63
    return ((row[s + j + 4] & 0x0F) | ((row[s + j - 4] >> 6) << 4),
            (row[s + j + 4] >> 4) | ((row[s + j] >> 6) << 4))


@njit(cache=True, nogil=True, inline="always")
def q6_k_lanes(row, o, half, chunk):
    """The four 16-lane groups of 6-bit values for lanes 16*chunk.. of one half super-block."""
    ql_lo = load_u8x16(row, o + 64 * half + 16 * chunk)
    ql_hi = load_u8x16(row, o + 64 * half + 32 + 16 * chunk)
    qh = load_u8x16(row, o + 128 + 32 * half + 16 * chunk)
    q1 = isub(ior(iand(ql_lo, 15), ishl(iand(qh, 3), 4)), 32)
    q2 = isub(ior(iand(ql_hi, 15), ishl(iand(ishr(qh, 2), 3), 4)), 32)
    q3 = isub(ior(ishr(ql_lo, 4), ishl(iand(ishr(qh, 4), 3), 4)), 32)
    q4 = isub(ior(ishr(ql_hi, 4), ishl(iand(ishr(qh, 6), 3), 4)), 32)
    return q1, q2, q3, q4


@njit(cache=True, nogil=True, inline="always")
def q5_lanes(row, o, size):
    """The 5-bit values (0..31) of the Q5_0/Q5_1 block at byte o (size 22 or 24): weights 0..15, 16..31."""
    q = load_u8x16(row, o + size - 16)
    qh = o + size - 20
    return ior(iand(q, 15), load_bits16(row, qh, 0, 16)), ior(ishr(q, 4), load_bits16(row, qh, 16, 16))


@njit(cache=True, nogil=True, inline="always")
def signed_byte(byte):
    return np.int32(byte) - 256 if byte > 127 else np.int32(byte)


@njit(cache=True, nogil=True)
def dequantize_row(ggml_type, row, out):
    """row (row_bytes,) u8 -> out (K,) f32."""
    K = out.shape[0]
    if ggml_type == Q4_1 or ggml_type == Q4_0:
        size = 20 if ggml_type == Q4_1 else 18
        for b in range(K // 32):
            o = b * size
            q = load_u8x16(row, o + size - 16)
            d = vsplat(load_f16(row, o))
            if ggml_type == Q4_1:
                m = vsplat(load_f16(row, o + 2))
                vstore(out, b * 32, vadd(vmul(d, itof(iand(q, 15))), m))
                vstore(out, b * 32 + 16, vadd(vmul(d, itof(ishr(q, 4))), m))
            else:
                vstore(out, b * 32, vmul(d, itof(isub(iand(q, 15), 8))))
                vstore(out, b * 32 + 16, vmul(d, itof(isub(ishr(q, 4), 8))))
    elif ggml_type == Q5_0 or ggml_type == Q5_1:
        size = 24 if ggml_type == Q5_1 else 22
        for b in range(K // 32):
            o = b * size
            lo, hi = q5_lanes(row, o, size)
            d = vsplat(load_f16(row, o))
            if ggml_type == Q5_1:
                m = vsplat(load_f16(row, o + 2))
                vstore(out, b * 32, vadd(vmul(d, itof(lo)), m))
                vstore(out, b * 32 + 16, vadd(vmul(d, itof(hi)), m))
            else:
                vstore(out, b * 32, vmul(d, itof(isub(lo, 16))))
                vstore(out, b * 32 + 16, vmul(d, itof(isub(hi, 16))))
    elif ggml_type == Q8_0:
        for b in range(K // 32):
            o = b * 34
            d = vsplat(load_f16(row, o))
            vstore(out, b * 32, vmul(itof(load_i8x16(row, o + 2)), d))
            vstore(out, b * 32 + 16, vmul(itof(load_i8x16(row, o + 18)), d))
    elif ggml_type == Q4_K:
        for sb in range(K // 256):
            o = sb * 144
            d = load_f16(row, o)
            dmin = load_f16(row, o + 2)
            for j in range(8):
                c = j // 2
                sc, m = q4_k_scale_min(row, o, j)
                scale = vsplat(d * _f32(sc))
                offset = vsplat(dmin * _f32(m))
                for part in range(2):
                    q = load_u8x16(row, o + 16 + c * 32 + part * 16)
                    q = ishr(q, 4) if j % 2 else iand(q, 15)
                    vstore(out, sb * 256 + j * 32 + part * 16, vsub(vmul(scale, itof(q)), offset))
    elif ggml_type == Q6_K:
        for sb in range(K // 256):
            o = sb * 210
            d = load_f16_tail(row, o + 208)
            for half in range(2):
                for chunk in range(2):
                    q1, q2, q3, q4 = q6_k_lanes(row, o, half, chunk)
                    k = sb * 256 + half * 128 + chunk * 16
                    g = o + 192 + 8 * half + chunk
                    vstore(out, k, vmul(vsplat(d * _f32(signed_byte(row[g]))), itof(q1)))
                    vstore(out, k + 32, vmul(vsplat(d * _f32(signed_byte(row[g + 2]))), itof(q2)))
                    vstore(out, k + 64, vmul(vsplat(d * _f32(signed_byte(row[g + 4]))), itof(q3)))
                    vstore(out, k + 96, vmul(vsplat(d * _f32(signed_byte(row[g + 6]))), itof(q4)))
    elif ggml_type == F16:
        for k in range(0, K, 16):
            vstore(out, k, load_f16x16(row, 2 * k))
    else:
        for k in range(0, K, 16):
            vstore(out, k, vload(row, 4 * k))
