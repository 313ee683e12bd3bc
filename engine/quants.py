"""GGML tensor types the engine computes with, one class per type.

Each class states its block geometry and has a NumPy reference dequantizer written from the
block layout in ggml-common.h. The numba kernels are tested against these, and these against
`gguf.quants.dequantize`, bit for bit: the order of float operations below is the order ggml uses.

Layouts (bytes, little endian; "f16" is an IEEE half):
  F32   one float32 per weight
  F16   one f16 per weight
  Q8_0  32 weights in 34 B:  d:f16 | q:int8[32]                w = d*q
  Q4_0  32 weights in 18 B:  d:f16 | qs:u8[16]                 w = d*(nibble-8)
  Q4_1  32 weights in 20 B:  d:f16 | m:f16 | qs:u8[16]         w = d*nibble + m
        (weight j < 16 is the low nibble of qs[j], weight j >= 16 the high nibble of qs[j-16])
  Q5_0  32 weights in 22 B:  d:f16 | qh:u8[4] | qs:u8[16]      w = d*(q-16)
  Q5_1  32 weights in 24 B:  d:f16 | m:f16 | qh:u8[4] | qs:u8[16]   w = d*q + m
        q = nibble (as Q4_0) | bit j of qh (a little-endian u32) << 4
  Q4_K  256 weights in 144 B: d:f16 | dmin:f16 | scales:u8[12] | qs:u8[128]
        8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min packed in `scales`;
        qs[32c:32c+32] holds sub-block 2c in its low nibbles and 2c+1 in its high nibbles.
        w = (d*sc)*nibble - dmin*min
  Q5_K  256 weights in 176 B: d:f16 | dmin:f16 | scales:u8[12] | qh:u8[32] | qs:u8[128]
        Q4_K's scales and nibbles, plus a fifth bit: bit i of qh[l] for weight 32i+l.
        w = (d*sc)*q - dmin*min
  Q6_K  256 weights in 210 B: ql:u8[128] | qh:u8[64] | scales:i8[16] | d:f16
        16 groups of 16 weights, one int8 scale each; q = 4 low bits from ql, 2 high bits
        from qh, minus 32.  w = (d*scale)*q
  Q3_K  256 weights in 110 B: hmask:u8[32] | qs:u8[64] | scales:u8[12] | d:f16
        weight 128h + 32s + l (h < 2, s < 4, l < 32): 2 bits (qs[32h+l] >> 2s) & 3, minus 4
        unless bit 4h+s of hmask[l] is set. 16 groups of 16, each a 6-bit scale minus 32:
        4 low bits in scales[0:8] (nibble j//8 of byte j%8), 2 high bits in scales[8:12]
        (bits 2(j//4).. of byte 8 + j%4).  w = (d*scale)*q
  Q2_K  256 weights in 84 B:  scales:u8[16] | qs:u8[64] | d:f16 | dmin:f16
        q as Q3_K's 2 low bits; group j of 16 has scale scales[j] & 15, min scales[j] >> 4.
        w = (d*scale)*q - dmin*min
  BF16  one bfloat16 per weight: the high 16 bits of a float32
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as GGMLType


@dataclass(frozen=True)
class QuantType:
    name: str
    ggml_type: int
    block_size: int     # weights per block
    type_size: int      # bytes per block

    def row_bytes(self, row_length: int) -> int:
        if row_length % self.block_size:
            raise ValueError(f"{self.name}: row length {row_length} is not a multiple of {self.block_size}")
        return row_length // self.block_size * self.type_size

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        """blocks (n, type_size) uint8 -> (n, block_size) float32."""
        raise NotImplementedError


def _f16(b: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 -> (n, 1) float32."""
    return b.copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16k) packed bytes -> (n, 32k) uint8: low nibbles of each 16-byte group, then high."""
    n, width = qs.shape
    groups = qs.reshape(n, width // 16, 16)
    return np.concatenate([groups & 0x0F, groups >> 4], axis=2).reshape(n, width * 2)


class F32(QuantType):
    def dequantize_blocks(self, blocks):
        return blocks.copy().view(np.float32)


class F16(QuantType):
    def dequantize_blocks(self, blocks):
        return blocks.copy().view(np.float16).astype(np.float32)


class Q8_0(QuantType):
    def dequantize_blocks(self, blocks):
        d = _f16(blocks[:, 0:2])
        q = blocks[:, 2:34].view(np.int8).astype(np.float32)
        return q * d


class Q4_0(QuantType):
    def dequantize_blocks(self, blocks):
        d = _f16(blocks[:, 0:2])
        q = _nibbles(blocks[:, 2:18]).astype(np.int8) - np.int8(8)
        return d * q.astype(np.float32)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes of a little-endian u32 -> (n, 32) uint8: bit j, shifted to 16 (the fifth bit)."""
    return np.unpackbits(qh, axis=1, bitorder="little") << np.uint8(4)


class Q4_1(QuantType):
    def dequantize_blocks(self, blocks):
        d = _f16(blocks[:, 0:2])
        m = _f16(blocks[:, 2:4])
        q = _nibbles(blocks[:, 4:20]).astype(np.float32)
        return d * q + m


class Q5_0(QuantType):
    def dequantize_blocks(self, blocks):
        d = _f16(blocks[:, 0:2])
        q = (_nibbles(blocks[:, 6:22]) | _high_bits(blocks[:, 2:6])).astype(np.int8) - np.int8(16)
        return d * q.astype(np.float32)


class Q5_1(QuantType):
    def dequantize_blocks(self, blocks):
        d = _f16(blocks[:, 0:2])
        m = _f16(blocks[:, 2:4])
        q = (_nibbles(blocks[:, 8:24]) | _high_bits(blocks[:, 4:8])).astype(np.float32)
        return d * q + m


def q4_k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scales (n, 12) uint8 -> (sc, min), each (n, 8) uint8: the 6-bit pairs of the 8 sub-blocks."""
    sc = np.empty((scales.shape[0], 8), np.uint8)
    mn = np.empty_like(sc)
    for j in range(4):
        sc[:, j] = scales[:, j] & 63
        mn[:, j] = scales[:, j + 4] & 63
    for j in range(4, 8):
        sc[:, j] = (scales[:, j + 4] & 0x0F) | ((scales[:, j - 4] >> 6) << 4)
        mn[:, j] = (scales[:, j + 4] >> 4) | ((scales[:, j] >> 6) << 4)
    return sc, mn


def _k_scale_offset(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K and Q5_K super-block header (d, dmin, 12 bytes of 6-bit pairs) -> the scale and offset
    of each of the 8 sub-blocks, each (n, 8, 1) float32: w = scale * q - offset."""
    n = blocks.shape[0]
    d = _f16(blocks[:, 0:2])
    dmin = _f16(blocks[:, 2:4])
    sc, mn = q4_k_scale_min(blocks[:, 4:16])
    return (d * sc.astype(np.float32)).reshape(n, 8, 1), (dmin * mn.astype(np.float32)).reshape(n, 8, 1)


class Q4_K(QuantType):
    def dequantize_blocks(self, blocks):
        n = blocks.shape[0]
        scale, offset = _k_scale_offset(blocks)
        qs = blocks[:, 16:144].reshape(n, 4, 32)
        q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
        return (scale * q - offset).reshape(n, 256)


class Q5_K(QuantType):
    def dequantize_blocks(self, blocks):
        n = blocks.shape[0]
        scale, offset = _k_scale_offset(blocks)
        qs = blocks[:, 48:176].reshape(n, 4, 32)
        low = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32)
        high = ((blocks[:, 16:48].reshape(n, 1, 32) >> _BIT_INDEX) & 1) << 4
        return (scale * (low | high).astype(np.float32) - offset).reshape(n, 256)


_BIT_INDEX = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
_CRUMB_SHIFT = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """(n, 64) bytes -> (n, 256) uint8 2-bit values: weight 128h + 32s + l is (qs[32h+l] >> 2s) & 3."""
    return ((qs.reshape(-1, 2, 1, 32) >> _CRUMB_SHIFT) & 3).reshape(-1, 256)


def q3_k_scales(scales: np.ndarray) -> np.ndarray:
    """scales (n, 12) uint8 -> (n, 16) int8: the signed 6-bit scales of the 16 groups."""
    sc = np.empty((scales.shape[0], 16), np.uint8)
    for j in range(16):
        low = (scales[:, j % 8] >> (4 * (j // 8))) & 0x0F
        high = (scales[:, 8 + j % 4] >> (2 * (j // 4))) & 3
        sc[:, j] = low | (high << 4)
    return sc.astype(np.int8) - np.int8(32)


class Q3_K(QuantType):
    def dequantize_blocks(self, blocks):
        n = blocks.shape[0]
        high = (blocks[:, 0:32].reshape(n, 1, 32) >> _BIT_INDEX) & 1
        q = _crumbs(blocks[:, 32:96]).astype(np.int8) - ((high ^ 1) << 2).reshape(n, 256).astype(np.int8)
        scale = (_f16(blocks[:, 108:110]) * q3_k_scales(blocks[:, 96:108]).astype(np.float32)).reshape(n, 16, 1)
        return (scale * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, 256)


class Q2_K(QuantType):
    def dequantize_blocks(self, blocks):
        n = blocks.shape[0]
        scales = blocks[:, 0:16]
        d = _f16(blocks[:, 80:82])
        dmin = _f16(blocks[:, 82:84])
        scale = (d * (scales & 0x0F).astype(np.float32)).reshape(n, 16, 1)
        offset = (dmin * (scales >> 4).astype(np.float32)).reshape(n, 16, 1)
        q = _crumbs(blocks[:, 16:80]).reshape(n, 16, 16).astype(np.float32)
        return (scale * q - offset).reshape(n, 256)


class BF16(QuantType):
    def dequantize_blocks(self, blocks):
        return (blocks.copy().view(np.uint16).astype(np.uint32) << 16).view(np.float32)


class Q6_K(QuantType):
    def dequantize_blocks(self, blocks):
        n = blocks.shape[0]
        ql = blocks[:, 0:128].reshape(n, 2, 64)
        qh = blocks[:, 128:192].reshape(n, 2, 32)
        scales = blocks[:, 192:208].view(np.int8).astype(np.float32)
        d = _f16(blocks[:, 208:210])
        q = np.empty((n, 2, 4, 32), np.int8)
        for half in range(2):
            lo, hi = ql[:, half, :32], ql[:, half, 32:]
            h = qh[:, half]
            q[:, half, 0] = ((lo & 0x0F) | (((h >> 0) & 3) << 4)).astype(np.int8) - 32
            q[:, half, 1] = ((hi & 0x0F) | (((h >> 2) & 3) << 4)).astype(np.int8) - 32
            q[:, half, 2] = ((lo >> 4) | (((h >> 4) & 3) << 4)).astype(np.int8) - 32
            q[:, half, 3] = ((hi >> 4) | (((h >> 6) & 3) << 4)).astype(np.int8) - 32
        scale = (d * scales).reshape(n, 16, 1)
        return (scale * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, 256)


QUANT_TYPES: dict[int, QuantType] = {
    t.ggml_type: t
    for t in (
        F32("F32", int(GGMLType.F32), 1, 4),
        F16("F16", int(GGMLType.F16), 1, 2),
        Q8_0("Q8_0", int(GGMLType.Q8_0), 32, 34),
        Q4_0("Q4_0", int(GGMLType.Q4_0), 32, 18),
        Q4_1("Q4_1", int(GGMLType.Q4_1), 32, 20),
        Q5_0("Q5_0", int(GGMLType.Q5_0), 32, 22),
        Q5_1("Q5_1", int(GGMLType.Q5_1), 32, 24),
        Q4_K("Q4_K", int(GGMLType.Q4_K), 256, 144),
        Q5_K("Q5_K", int(GGMLType.Q5_K), 256, 176),
        Q6_K("Q6_K", int(GGMLType.Q6_K), 256, 210),
        Q3_K("Q3_K", int(GGMLType.Q3_K), 256, 110),
        Q2_K("Q2_K", int(GGMLType.Q2_K), 256, 84),
        BF16("BF16", int(GGMLType.BF16), 1, 2),
    )
}


def quant_type(ggml_type: int) -> QuantType:
    try:
        return QUANT_TYPES[int(ggml_type)]
    except KeyError:
        name = GGMLType(ggml_type).name if ggml_type in GGMLType._value2member_map_ else str(ggml_type)
        supported = ", ".join(t.name for t in QUANT_TYPES.values())
        raise ValueError(f"tensor type {name} is not supported (supported: {supported})") from None


def dequantize(data: np.ndarray, ggml_type: int) -> np.ndarray:
    """Reference dequantization: data (rows, row_bytes) uint8 -> (rows, row_length) float32."""
    qt = quant_type(ggml_type)
    rows = data.shape[0]
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1, qt.type_size)
    return qt.dequantize_blocks(raw).reshape(rows, -1)
