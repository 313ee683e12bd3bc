"""Reading one weight out of a row of GGML blocks (CUDA): the device functions every kernel that
touches quantized weights shares, and a row dequantizer to test them with.

    weight_at(row (row_bytes,) u8, ggml_type, k) -> f32    weight k of the row

The block layouts are those of engine.quants; the arithmetic is the CPU kernels' (scale * q, then
- offset or + min), in float32. Half floats are decoded from their bits with a table of powers of two (exact),
so a weight read here equals the reference dequantizer's bit for bit (before any FMA contraction
the GPU compiler may apply in the callers).
"""
import math

import numpy as np
from numba import cuda

from ..ggml_types import F16, F32, Q4_0, Q4_1, Q4_K, Q6_K, Q8_0
from .launch import device_helper, elementwise_grid

_f32 = np.float32
_i32 = np.int32
# 2**(e - 25) for a half's exponent field e (and 2**-24, the subnormal step, for e = 0); the same
# for float32's 2**(e - 150). Frozen into the kernels as constants.
_HALF_SCALE = np.array([2.0 ** (max(e, 1) - 25) for e in range(32)], np.float32)
_SINGLE_SCALE = np.array([2.0 ** (max(e, 1) - 150) for e in range(256)], np.float32)


@device_helper
def byte_at(row, o):
    # bytes as int32 before any shift: NumPy scalars keep uint8 under << (the simulator runs them)
    return _i32(row[o])


@device_helper
def f16_at(row, o):
    """The IEEE half at bytes o, o+1 (little endian) as float32."""
    bits = byte_at(row, o) | (byte_at(row, o + 1) << 8)
    exponent = (bits >> 10) & 31
    mantissa = bits & 1023
    if exponent == 31:
        magnitude = _f32(math.inf) if mantissa == 0 else _f32(math.nan)
    else:
        magnitude = _f32(mantissa | (1024 if exponent else 0)) * _HALF_SCALE[exponent]
    return _f32(-magnitude) if bits & 0x8000 else _f32(magnitude)


@device_helper
def f32_at(row, o):
    """The IEEE float32 at bytes o..o+3 (little endian)."""
    low = byte_at(row, o) | (byte_at(row, o + 1) << 8)
    high = byte_at(row, o + 2) | (byte_at(row, o + 3) << 8)
    exponent = (high >> 7) & 255
    mantissa = ((high & 127) << 16) | low
    if exponent == 255:
        magnitude = _f32(math.inf) if mantissa == 0 else _f32(math.nan)
    else:
        magnitude = _f32(mantissa | ((1 << 23) if exponent else 0)) * _SINGLE_SCALE[exponent]
    return _f32(-magnitude) if high & 0x8000 else _f32(magnitude)


@device_helper
def signed_byte_at(row, o):
    b = byte_at(row, o)
    return b - 256 if b > 127 else b


@device_helper
def q4_k_scale_min(row, o, j):
    """6-bit (scale, min) of sub-block j of the Q4_K super-block at byte o."""
    s = o + 4
    if j < 4:
        return byte_at(row, s + j) & 63, byte_at(row, s + j + 4) & 63
    return ((byte_at(row, s + j + 4) & 0x0F) | ((byte_at(row, s + j - 4) >> 6) << 4),
            (byte_at(row, s + j + 4) >> 4) | ((byte_at(row, s + j) >> 6) << 4))


@device_helper
def weight_at(row, ggml_type, k):
    """Weight k of a row (row_bytes,) u8 of GGML type ggml_type, as float32. ggml_type is a
    compile-time constant in every caller (kernels are built per type), so the branches fold."""
    if ggml_type == Q4_0 or ggml_type == Q4_1:
        j = k % 32
        size = 20 if ggml_type == Q4_1 else 18
        o = (k // 32) * size
        byte = byte_at(row, o + size - 16 + (j & 15))
        q = (byte >> 4) if j >= 16 else (byte & 15)
        if ggml_type == Q4_1:
            return f16_at(row, o) * _f32(q) + f16_at(row, o + 2)
        return f16_at(row, o) * _f32(q - 8)
    if ggml_type == Q8_0:
        o = (k // 32) * 34
        return _f32(signed_byte_at(row, o + 2 + k % 32)) * f16_at(row, o)
    if ggml_type == Q4_K:
        o = (k // 256) * 144
        r = k % 256
        j = r // 32
        sc, m = q4_k_scale_min(row, o, j)
        byte = byte_at(row, o + 16 + (j // 2) * 32 + r % 32)
        q = (byte >> 4) if j % 2 else (byte & 15)
        return (f16_at(row, o) * _f32(sc)) * _f32(q) - f16_at(row, o + 2) * _f32(m)
    if ggml_type == Q6_K:
        o = (k // 256) * 210
        r = k % 256
        half = r // 128
        quarter = (r % 128) // 32
        lane = r % 32
        low = byte_at(row, o + 64 * half + lane + 32 * (quarter & 1))
        nibble = (low >> 4) if quarter >= 2 else (low & 15)
        high = (byte_at(row, o + 128 + 32 * half + lane) >> (2 * quarter)) & 3
        scale = signed_byte_at(row, o + 192 + 8 * half + 2 * quarter + lane // 16)
        return (f16_at(row, o + 208) * _f32(scale)) * _f32((nibble | (high << 4)) - 32)
    if ggml_type == F16:
        return f16_at(row, 2 * k)
    return f32_at(row, 4 * k)


_row_kernels = {}


def _dequantize_row_kernel(ggml_type):
    if ggml_type not in _row_kernels:
        @cuda.jit
        def kernel(row, out):
            for k in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
                out[k] = weight_at(row, ggml_type, k)
        _row_kernels[ggml_type] = kernel
    return _row_kernels[ggml_type]


def dequantize_row(ggml_type, row, out):
    """row (row_bytes,) u8 -> out (K,) f32, on the device."""
    blocks, threads = elementwise_grid(out.shape[0])
    _dequantize_row_kernel(int(ggml_type))[blocks, threads](row, out)


SUPPORTED = (F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)
