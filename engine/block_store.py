"""A shared store of full KV blocks, and the byte format blocks travel in.

The engine needs only the BlockStore protocol (services/ implements it on Redis): on a prefix
miss it asks the store for the next blocks of a prompt by hash, and it offers every full block it
computes. A block's bytes are a fixed header and the raw float32 keys and values of every layer:

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
_HEADER = struct.Struct("<4sHH16s16s4IQI")


class BlockStore(Protocol):
    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """The stored value of each key (a block hash), None where absent."""

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Store (block hash, encoded block) pairs; best effort, may drop some."""


class InvalidBlock(ValueError):
    """Stored bytes that must not be used: corrupt, truncated, or from another model or shape."""


def _fingerprint_bytes(fingerprint: str) -> bytes:
    return hashlib.blake2b(fingerprint.encode(), digest_size=16).digest()


def encode_block(fingerprint: str, block_hash: bytes, keys: np.ndarray, values: np.ndarray) -> bytes:
    """keys (layers, kv_heads, head_dim, block_size) f32, values (layers, kv_heads, block_size, head_dim) f32."""
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    values = np.ascontiguousarray(values, dtype=np.float32)
    payload = keys.tobytes() + values.tobytes()
    header = _HEADER.pack(MAGIC, VERSION, DTYPE_F32, _fingerprint_bytes(fingerprint), block_hash, *keys.shape,
                          len(payload), zlib.crc32(payload))
    return header + payload


def decode_block(data: bytes, fingerprint: str, block_hash: bytes, k_shape: tuple[int, int, int, int]):
    """(keys, values) from encode_block's bytes, or InvalidBlock."""
    if len(data) < _HEADER.size:
        raise InvalidBlock("shorter than a block header")
    magic, version, dtype, fp, stored_hash, *shape_and_rest = _HEADER.unpack_from(data)
    shape, payload_len, checksum = tuple(shape_and_rest[:4]), shape_and_rest[4], shape_and_rest[5]
    if magic != MAGIC or version != VERSION:
        raise InvalidBlock(f"not a KV block of version {VERSION}")
    if dtype != DTYPE_F32:
        raise InvalidBlock(f"dtype code {dtype}, expected float32")
    if fp != _fingerprint_bytes(fingerprint):
        raise InvalidBlock("written for another model")
    if stored_hash != block_hash:
        raise InvalidBlock("stored under another block's hash")
    if shape != tuple(k_shape):
        raise InvalidBlock(f"shape {shape}, expected {tuple(k_shape)}")
    n = int(np.prod(shape)) * 4
    payload = memoryview(data)[_HEADER.size:]
    if payload_len != 2 * n or len(payload) != payload_len:
        raise InvalidBlock("truncated or padded payload")
    if zlib.crc32(payload) != checksum:
        raise InvalidBlock("checksum mismatch")
    layers, heads, head_dim, block_size = shape
    keys = np.frombuffer(payload, dtype=np.float32, count=n // 4).reshape(shape)
    values = np.frombuffer(payload, dtype=np.float32, count=n // 4, offset=n)
    return keys, values.reshape(layers, heads, block_size, head_dim)
