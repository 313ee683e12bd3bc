"""Decoding GGML blocks to float32 (CPU, numba): whole rows, and the pieces other kernels share.

dequantize_row is bit-exact with engine.quants: the same float operations in the same order
(no fused multiply-add), so the batch path multiplies exactly the reference weights.
"""
import numpy as np
from numba import njit

from ..ggml_types import BF16, F16, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0
from ..simd import (
    iand,
    ior,
    ishl,
    ishr,
    isub,
    itof,
    load_bf16x16,
    load_bits16,
    load_f16,
    load_f16_pair,
    load_f16_tail,
    load_f16x16,
    load_i8x16,
    load_u8x16,
    q4_k_mins,
    q4_k_scales,
    vadd,
    vlane,
    vload,
    vmul,
    vsplat,
    vstore,
    vsub,
    vzero,
)

_f32 = np.float32


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
def q6_k_group(row, o, half, chunk, group):
    """The 6-bit values of weights half*128 + 32*group + 16*chunk .. +15 of the Q6_K super-block at
    byte o: group `group` of q6_k_lanes(row, o, half, chunk) alone."""
    ql = load_u8x16(row, o + 64 * half + 16 * chunk + 32 * (group % 2))
    qh = load_u8x16(row, o + 128 + 32 * half + 16 * chunk)
    low = ishr(ql, 4) if group >= 2 else iand(ql, 15)
    return isub(ior(low, ishl(iand(ishr(qh, 2 * group), 3), 4)), 32)


@njit(cache=True, nogil=True, inline="always")
def q5_lanes(row, o, size):
    """The 5-bit values (0..31) of the Q5_0/Q5_1 block at byte o (size 22 or 24): weights 0..15, 16..31."""
    q = load_u8x16(row, o + size - 16)
    qh = o + size - 20
    return ior(iand(q, 15), load_bits16(row, qh, 0, 16)), ior(ishr(q, 4), load_bits16(row, qh, 16, 16))


@njit(cache=True, nogil=True, inline="always")
def q5_k_lanes(row, o, j, part):
    """The 5-bit values (0..31) of lanes 16*part.. of sub-block j of the Q5_K super-block at byte o."""
    q = load_u8x16(row, o + 48 + (j // 2) * 32 + part * 16)
    q = ishr(q, 4) if j % 2 else iand(q, 15)
    return ior(q, ishl(iand(ishr(load_u8x16(row, o + 16 + part * 16), j), 1), 4))


@njit(cache=True, nogil=True, inline="always")
def crumb_lanes(row, qs, i, part):
    """2-bit values of weights 32i + 16*part.. of a Q2_K/Q3_K super-block whose qs start at byte qs."""
    return iand(ishr(load_u8x16(row, qs + 32 * (i // 4) + 16 * part), 2 * (i % 4)), 3)


@njit(cache=True, nogil=True, inline="always")
def q3_k_lanes(row, o, i, part):
    """Signed 3-bit values (-4..3) of weights 32i + 16*part.. of the Q3_K super-block at byte o."""
    high = iand(ishr(load_u8x16(row, o + 16 * part), i), 1)      # hmask bit i: no -4
    return isub(ior(crumb_lanes(row, o + 32, i, part), ishl(high, 2)), 4)


@njit(cache=True, nogil=True, inline="always")
def q3_k_scale(row, o, j):
    """The signed 6-bit scale of 16-weight group j of the Q3_K super-block at byte o."""
    s = o + 96
    low = (row[s + j % 8] >> (4 * (j // 8))) & 15
    high = (row[s + 8 + j % 4] >> (2 * (j // 4))) & 3
    return np.int32(low | (high << 4)) - 32


@njit(cache=True, nogil=True, inline="always")
def _scaled(d, q, m):
    """d * q - m for one 16-lane group: d, m float32 scalars, q int lanes."""
    return vsub(vmul(vsplat(d), itof(q)), vsplat(m))


@njit(cache=True, nogil=True, inline="always")
def has_superblock_scales(ggml_type):
    """Q4_K, Q5_K, Q6_K: the scales of a 256-weight super-block decode as vectors, once for its
    eight 32-weight blocks (superblock_scales, then superblock_block_weights)."""
    return ggml_type == Q4_K or ggml_type == Q5_K or ggml_type == Q6_K


@njit(cache=True, nogil=True, inline="always")
def superblock_scales(ggml_type, row, sb):
    """(scales, offsets) f32x16 of super-block sb of a Q4_K/Q5_K/Q6_K row.
    Q4_K, Q5_K: lane j (0..7) of scales is d * scale_j, of offsets dmin * min_j (sub-block j).
    Q6_K: lane g (0..15) of scales is d * scale_g (16-weight group g); offsets are zero."""
    if ggml_type == Q6_K:
        o = sb * 210
        return vmul(itof(load_i8x16(row, o + 192)), vsplat(load_f16_tail(row, o + 208))), vzero()
    o = sb * (144 if ggml_type == Q4_K else 176)
    d, dmin = load_f16_pair(row, o)
    return vmul(itof(q4_k_scales(row, o)), vsplat(d)), vmul(itof(q4_k_mins(row, o)), vsplat(dmin))


@njit(cache=True, nogil=True, inline="always")
def superblock_block_weights(ggml_type, row, sb, j, first, second):
    """Weights 32j .. 32j+31 of super-block sb of a Q4_K/Q5_K/Q6_K row: (lo, hi) f32x16, given
    the block's two scalars of superblock_scales (block_scale_pair): Q4_K/Q5_K its scale and
    offset, Q6_K the scales of its two 16-weight groups."""
    if ggml_type == Q6_K:
        o = sb * 210
        half, group = divmod(j, 4)              # weights half*128 + 32*group + 16*chunk ..
        return (vmul(vsplat(first), itof(q6_k_group(row, o, half, 0, group))),
                vmul(vsplat(second), itof(q6_k_group(row, o, half, 1, group))))
    if ggml_type == Q5_K:
        o = sb * 176
        return _scaled(first, q5_k_lanes(row, o, j, 0), second), _scaled(first, q5_k_lanes(row, o, j, 1), second)
    o = sb * 144
    qa = load_u8x16(row, o + 16 + (j // 2) * 32)
    qb = load_u8x16(row, o + 32 + (j // 2) * 32)
    if j % 2:
        return _scaled(first, ishr(qa, 4), second), _scaled(first, ishr(qb, 4), second)
    return _scaled(first, iand(qa, 15), second), _scaled(first, iand(qb, 15), second)


@njit(cache=True, nogil=True, inline="always")
def block_scale_pair(ggml_type, scales, offsets, j):
    """The two scalars superblock_block_weights takes for block j, from superblock_scales' vectors
    (j a loop index LLVM unrolls, so each is a register lane). Q6_K's block j is groups 2j, 2j+1."""
    if ggml_type == Q6_K:
        return vlane(scales, 2 * j), vlane(scales, 2 * j + 1)
    return vlane(scales, j), vlane(offsets, j)


@njit(cache=True, nogil=True, inline="always")
def store_superblock_scales(ggml_type, row, sb, scratch):
    """superblock_scales into scratch (32,) f32: scales at 0..15, offsets at 16..31, for loops
    whose registers are taken (four tokens' sums): read back by stored_scale_pair, each pair is
    two broadcasts from memory. In registers they spilled: four tokens of a Q4_K row cost 20 %
    more than with them stored (AVX2 EPYC)."""
    scales, offsets = superblock_scales(ggml_type, row, sb)
    vstore(scratch, 0, scales)
    vstore(scratch, 16, offsets)


@njit(cache=True, nogil=True, inline="always")
def stored_scale_pair(ggml_type, scratch, j):
    """block_scale_pair from store_superblock_scales' scratch."""
    if ggml_type == Q6_K:
        return scratch[2 * j], scratch[2 * j + 1]
    return scratch[j], scratch[16 + j]


@njit(cache=True, nogil=True, inline="always")
def block_weights(ggml_type, row, b):
    """Weights 32b .. 32b+31 of a row, dequantized: (lo, hi) f32x16, lanes 0-15 and 16-31.

    The one definition of every type's weights in float32 (dequantize_row, and the multi-token row
    products of dot_f32). A K-quant block is one 32-weight sub-block of its 256-weight super-block;
    a loop over a whole row decodes Q4_K/Q5_K/Q6_K scales once per super-block instead
    (superblock_scales: the same products, so the same bits)."""
    if has_superblock_scales(ggml_type):
        sb, j = divmod(b, 8)
        scales, offsets = superblock_scales(ggml_type, row, sb)
        first, second = block_scale_pair(ggml_type, scales, offsets, j)
        return superblock_block_weights(ggml_type, row, sb, j, first, second)
    if ggml_type == Q5_0 or ggml_type == Q5_1:
        size = 24 if ggml_type == Q5_1 else 22
        o = b * size
        lo, hi = q5_lanes(row, o, size)
        d = vsplat(load_f16(row, o))
        if ggml_type == Q5_1:
            m = vsplat(load_f16(row, o + 2))
            return vadd(vmul(d, itof(lo)), m), vadd(vmul(d, itof(hi)), m)
        return vmul(d, itof(isub(lo, 16))), vmul(d, itof(isub(hi, 16)))
    if ggml_type == Q8_0:
        o = b * 34
        d = vsplat(load_f16(row, o))
        return vmul(itof(load_i8x16(row, o + 2)), d), vmul(itof(load_i8x16(row, o + 18)), d)
    if ggml_type == Q4_1 or ggml_type == Q4_0:
        size = 20 if ggml_type == Q4_1 else 18
        o = b * size
        q = load_u8x16(row, o + size - 16)
        d = vsplat(load_f16(row, o))
        if ggml_type == Q4_1:
            m = vsplat(load_f16(row, o + 2))
            return vadd(vmul(d, itof(iand(q, 15))), m), vadd(vmul(d, itof(ishr(q, 4))), m)
        return vmul(d, itof(isub(iand(q, 15), 8))), vmul(d, itof(isub(ishr(q, 4), 8)))
    if ggml_type == Q3_K:
        sb, i = divmod(b, 8)
        o = sb * 110
        d = load_f16_tail(row, o + 108)
        return (vmul(vsplat(d * _f32(q3_k_scale(row, o, 2 * i))), itof(q3_k_lanes(row, o, i, 0))),
                vmul(vsplat(d * _f32(q3_k_scale(row, o, 2 * i + 1))), itof(q3_k_lanes(row, o, i, 1))))
    if ggml_type == Q2_K:
        sb, i = divmod(b, 8)
        o = sb * 84
        d, dmin = load_f16_pair(row, o + 80)
        s0 = row[o + 2 * i]
        s1 = row[o + 2 * i + 1]
        return (_scaled(d * _f32(s0 & 15), crumb_lanes(row, o + 16, i, 0), dmin * _f32(s0 >> 4)),
                _scaled(d * _f32(s1 & 15), crumb_lanes(row, o + 16, i, 1), dmin * _f32(s1 >> 4)))
    if ggml_type == F16:
        return load_f16x16(row, 64 * b), load_f16x16(row, 64 * b + 32)
    if ggml_type == BF16:
        return load_bf16x16(row, 64 * b), load_bf16x16(row, 64 * b + 32)
    return vload(row, 128 * b), vload(row, 128 * b + 64)


@njit(cache=True, nogil=True)
def dequantize_row(ggml_type, row, out):
    """row (row_bytes,) u8 -> out (K,) f32."""
    if has_superblock_scales(ggml_type):
        for sb in range(out.shape[0] // 256):
            scales, offsets = superblock_scales(ggml_type, row, sb)
            for j in range(8):
                first, second = block_scale_pair(ggml_type, scales, offsets, j)
                lo, hi = superblock_block_weights(ggml_type, row, sb, j, first, second)
                vstore(out, 256 * sb + 32 * j, lo)
                vstore(out, 256 * sb + 32 * j + 16, hi)
        return
    for b in range(out.shape[0] // 32):
        lo, hi = block_weights(ggml_type, row, b)
        vstore(out, 32 * b, lo)
        vstore(out, 32 * b + 16, hi)
