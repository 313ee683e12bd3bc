"""The pool of KV-cache blocks: reference counts, a least-recently-freed queue, and the prefix
cache that maps block hashes to blocks. Plain Python on ints.

Invariants:
- A block is in the free queue iff its ref_count is 0. Free blocks keep their contents and their
  hash: a later request with the same prefix revives them (a "hit") until they are reused.
- allocate() takes blocks from the front of the free queue (least recently freed first), and a
  block that is reused loses its hash: it leaves the prefix cache at that moment (eviction).
- A hash maps to at most one block. Two sequences that compute the same full block each keep
  their own copy; only the first is published.
- Hashes are chained: hash(block i) covers the model, block i-1's hash and block i's token ids,
  so equal hashes mean equal prefixes. The token ids are kept beside the hash and compared on
  every hit, so a hash collision costs a recomputation, never a wrong answer.
"""
from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


def root_hash(model_fingerprint: str) -> bytes:
    """The parent hash of a sequence's first block: ties every hash to one model's weights."""
    return hashlib.blake2b(model_fingerprint.encode(), digest_size=16).digest()


def chain_hash(parent: bytes, token_ids: Sequence[int]) -> bytes:
    """Stable across processes and machines (never Python's hash())."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(struct.pack(f"<{len(token_ids)}i", *token_ids))
    return h.digest()


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None
    token_ids: tuple[int, ...] | None = None      # beside the hash, to catch collisions


class NoFreeBlocks(RuntimeError):
    pass


class CacheChanges:
    """The prefix cache's changes since they were last taken: block hashes published and evicted
    (a worker publishes them for KV-aware routing). A hash cached then evicted in between is in
    neither."""

    def __init__(self):
        self.added: set[bytes] = set()
        self.removed: set[bytes] = set()

    def cached(self, block_hash: bytes) -> None:
        self.removed.discard(block_hash)
        self.added.add(block_hash)

    def evicted(self, block_hash: bytes) -> None:
        if block_hash in self.added:
            self.added.discard(block_hash)
        else:
            self.removed.add(block_hash)

    def take(self) -> tuple[list[bytes], list[bytes]]:
        """(added, removed) since the last take."""
        added, removed = list(self.added), list(self.removed)
        self.added.clear()
        self.removed.clear()
        return added, removed


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[bytes, int] = {}
        self.num_evictions = 0
        self.changes = CacheChanges()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def free_queue(self) -> list[int]:
        """Free block ids, next to be reused first (for tests and metrics)."""
        return list(self._free)

    def lookup(self, block_hash: bytes, token_ids: Sequence[int]) -> int | None:
        """The block holding this full block of tokens, if the prefix cache has it."""
        block_id = self._cached.get(block_hash)
        if block_id is None or self.blocks[block_id].token_ids != tuple(token_ids):
            return None
        return block_id

    def allocate(self, n: int) -> list[int]:
        """n blocks for new content, each with ref_count 1."""
        if n > len(self._free):
            raise NoFreeBlocks(f"{n} blocks wanted, {len(self._free)} free")
        ids = []
        for _ in range(n):
            block_id, _ = self._free.popitem(last=False)
            block = self.blocks[block_id]
            if block.block_hash is not None:              # evict: reused content leaves the cache
                if self._cached.get(block.block_hash) == block_id:
                    del self._cached[block.block_hash]
                    self.changes.evicted(block.block_hash)
                block.block_hash = None
                block.token_ids = None
                self.num_evictions += 1
            block.ref_count = 1
            ids.append(block_id)
        return ids

    def touch(self, block_ids: Sequence[int]) -> None:
        """Take a reference to cached blocks (a prefix hit), reviving free ones."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference to each block. Blocks are queued in reverse order, so a sequence's
        tail (least likely to be shared) is reused before its head."""
        for block_id in reversed(block_ids):
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block_id} freed more often than referenced")
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None

    def cache(self, block_id: int, block_hash: bytes, token_ids: Sequence[int]) -> bool:
        """Publish a full block under its hash. False if another block already holds that hash."""
        block = self.blocks[block_id]
        if block.block_hash is not None:
            return block.block_hash == block_hash
        if block_hash in self._cached:
            return False
        block.block_hash = block_hash
        block.token_ids = tuple(token_ids)
        self._cached[block_hash] = block_id
        self.changes.cached(block_hash)
        return True

    def cached_hashes(self) -> list[bytes]:
        """Every hash in the prefix cache now."""
        return list(self._cached)
