"""A shared store of full KV blocks, and the byte format blocks travel in.

The engine needs only the BlockStore protocol (services/ implements it on Redis): on a prefix
miss it asks the store for the next blocks of a prompt by hash, and it offers every full block it
computes. A block's bytes are a fixed header and the raw keys and values of every layer, in the
cache's own element type (float32, or float16 as its bits: KV_DTYPES):

    magic "MLKV" | version u16 | dtype u16 | model fingerprint 16B | block hash 16B
    | k shape 4 x u32 (layers, kv heads, head dim, block size) | payload bytes u64
    | crc32 of the payload u32 | payload = keys then values, C order

(crc32 finds corruption at 4 GB/s; identity is the hash and fingerprint's job, not the checksum's.)

Never pickle. decode_block rejects anything that does not match exactly what this engine would
have written for that hash (another model, another shape, a truncated or altered payload):
the caller then recomputes the block.
"""
from __future__ import annotations

import hashlib
import struct
import zlib
from typing import Protocol

import numpy as np

MAGIC = b"MLKV"
VERSION = 1
DTYPE_F32 = 0
DTYPE_F16 = 1
# a KV cache's element type: (how its arrays store it, its dtype code in the block header); numba
# has no float16 on the CPU, so a float16 cache holds each half's bits in a uint16
KV_DTYPES = {"float32": (np.dtype(np.float32), DTYPE_F32), "float16": (np.dtype(np.uint16), DTYPE_F16)}
_HEADER = struct.Struct("<4sHH16s16s4IQI")


class BlockStore(Protocol):
    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """The stored value of each key (a block hash), None where absent."""

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Store (block hash, encoded block) pairs; best effort, may drop some."""


class InvalidBlock(ValueError):
    """Stored bytes that must not be used: corrupt, truncated, or from another model or shape."""


def kv_storage(kv_dtype: str) -> np.dtype:
    """The array dtype a KV cache of this element type is kept in (ValueError for an unknown one)."""
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"the KV cache's dtype is one of {', '.join(KV_DTYPES)}, not {kv_dtype!r}")
    return KV_DTYPES[kv_dtype][0]


def store_namespace(model_fingerprint: str, kv_dtype: str) -> str:
    """What a shared store names a model's blocks by: its fingerprint, and the element type where it
    is not float32, so that workers of one model with different cache types keep apart blocks that
    neither could read."""
    return model_fingerprint if kv_dtype == "float32" else f"{model_fingerprint}-{kv_dtype}"


def _fingerprint_bytes(fingerprint: str) -> bytes:
    return hashlib.blake2b(fingerprint.encode(), digest_size=16).digest()


def encode_block(fingerprint: str, block_hash: bytes, keys: np.ndarray, values: np.ndarray) -> bytes:
    """keys (layers, kv_heads, head_dim, block_size), values (layers, kv_heads, block_size, head_dim),
    both float32 or both float16 bits (uint16), as the cache holds them."""
    codes = dict(KV_DTYPES.values())                  # storage dtype -> header code
    if keys.dtype not in codes or values.dtype != keys.dtype:
        raise ValueError(f"KV blocks are float32 or float16 bits (uint16), not {keys.dtype} / {values.dtype}")
    code = codes[keys.dtype]
    payload = np.ascontiguousarray(keys).tobytes() + np.ascontiguousarray(values).tobytes()
    header = _HEADER.pack(MAGIC, VERSION, code, _fingerprint_bytes(fingerprint), block_hash, *keys.shape,
                          len(payload), zlib.crc32(payload))
    return header + payload


def decode_block(data: bytes, fingerprint: str, block_hash: bytes, k_shape: tuple[int, int, int, int],
                 kv_dtype: str = "float32"):
    """(keys, values) from encode_block's bytes, in kv_dtype's storage (kv_storage), or InvalidBlock."""
    storage, expected_code = KV_DTYPES[kv_dtype]
    if len(data) < _HEADER.size:
        raise InvalidBlock("shorter than a block header")
    magic, version, dtype, fp, stored_hash, *shape_and_rest = _HEADER.unpack_from(data)
    shape, payload_len, checksum = tuple(shape_and_rest[:4]), shape_and_rest[4], shape_and_rest[5]
    if magic != MAGIC or version != VERSION:
        raise InvalidBlock(f"not a KV block of version {VERSION}")
    if dtype != expected_code:
        raise InvalidBlock(f"dtype code {dtype}, expected {expected_code} ({kv_dtype})")
    if fp != _fingerprint_bytes(fingerprint):
        raise InvalidBlock("written for another model")
    if stored_hash != block_hash:
        raise InvalidBlock("stored under another block's hash")
    if shape != tuple(k_shape):
        raise InvalidBlock(f"shape {shape}, expected {tuple(k_shape)}")
    count = int(np.prod(shape))
    n = count * storage.itemsize
    payload = memoryview(data)[_HEADER.size:]
    if payload_len != 2 * n or len(payload) != payload_len:
        raise InvalidBlock("truncated or padded payload")
    if zlib.crc32(payload) != checksum:
        raise InvalidBlock("checksum mismatch")
    layers, heads, head_dim, block_size = shape
    keys = np.frombuffer(payload, dtype=storage, count=count).reshape(shape)
    values = np.frombuffer(payload, dtype=storage, count=count, offset=n)
    return keys, values.reshape(layers, heads, block_size, head_dim)
