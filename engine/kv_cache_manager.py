"""Sequences' view of the block pool: which blocks hold a sequence's tokens, which of its prefix
is already cached, and room for the tokens a step will compute. Plain Python on ints.
"""
from __future__ import annotations

from dataclasses import dataclass

from .block_pool import BlockPool, chain_hash, root_hash
from .sequence import Sequence


@dataclass
class PrefixCacheStats:
    queried_tokens: int = 0        # prompt tokens looked up at admission
    hit_tokens: int = 0            # of those, found in the cache (local, or imported from the store)

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class KVCacheManager:
    def __init__(self, pool: BlockPool, model_fingerprint: str):
        self.pool = pool
        self.block_size = pool.block_size
        self.root = root_hash(model_fingerprint)
        self.stats = PrefixCacheStats()

    def block_tokens(self, seq: Sequence, i: int) -> list[int]:
        return seq.token_ids[i * self.block_size:(i + 1) * self.block_size]

    def update_hashes(self, seq: Sequence) -> None:
        """Extend seq.block_hashes to every full block of seq.token_ids."""
        for i in range(len(seq.block_hashes), seq.num_tokens // self.block_size):
            parent = seq.block_hashes[i - 1] if i else self.root
            seq.block_hashes.append(chain_hash(parent, self.block_tokens(seq, i)))

    def max_prefix_blocks(self, seq: Sequence) -> int:
        """Blocks a prefix hit may cover: never the last token, whose logits the step must compute."""
        return (seq.num_tokens - 1) // self.block_size

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix of seq (at most max_prefix_blocks)."""
        self.update_hashes(seq)
        hits = []
        for i in range(self.max_prefix_blocks(seq)):
            block_id = self.pool.lookup(seq.block_hashes[i], self.block_tokens(seq, i))
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def admission_blocks(self, seq: Sequence, hits: list[int], num_new_tokens: int) -> int:
        """Free blocks that admitting seq with its cached prefix `hits` plus num_new_tokens more
        tokens takes: its new blocks, and the prefix's blocks it revives from the free list."""
        reviving = sum(1 for b in hits if self.pool.blocks[b].ref_count == 0)
        return self.blocks_for(len(hits) * self.block_size + num_new_tokens) - len(hits) + reviving

    def can_admit(self, seq: Sequence, hits: list[int], num_new_tokens: int) -> bool:
        """Room for seq with its cached prefix `hits` plus num_new_tokens more tokens."""
        return self.admission_blocks(seq, hits, num_new_tokens) <= self.pool.num_free_blocks

    def admit(self, seq: Sequence, hits: list[int]) -> None:
        """Give seq its cached prefix: those tokens count as computed."""
        self.pool.touch(hits)
        seq.block_table = list(hits)
        seq.num_computed_tokens = len(hits) * self.block_size
        seq.num_published_blocks = len(hits)
        if not seq.admitted_before:                   # usage reports the first admission's hit
            seq.admitted_before = True
            seq.num_cached_prompt_tokens = min(seq.num_computed_tokens, seq.num_prompt_tokens)
        self.stats.queried_tokens += seq.num_tokens
        self.stats.hit_tokens += seq.num_computed_tokens

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Blocks for seq's next num_new_tokens tokens; False (nothing allocated) if the pool is short."""
        needed = self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if needed > self.pool.num_free_blocks:
            return False
        if needed > 0:
            seq.block_table.extend(self.pool.allocate(needed))
        return True

    def publish_computed_blocks(self, seq: Sequence) -> list[tuple[int, bytes, list[int]]]:
        """Put seq's newly computed full blocks in the prefix cache; returns those published
        (block id, hash, token ids), for a shared store."""
        self.update_hashes(seq)
        published = []
        full = seq.num_computed_tokens // self.block_size
        for i in range(seq.num_published_blocks, full):
            block_id = seq.block_table[i]
            tokens = self.block_tokens(seq, i)
            if self.pool.blocks[block_id].block_hash is None and self.pool.cache(block_id, seq.block_hashes[i], tokens):
                published.append((block_id, seq.block_hashes[i], tokens))
        seq.num_published_blocks = max(seq.num_published_blocks, full)
        return published

    def free(self, seq: Sequence) -> None:
        self.pool.free(seq.block_table)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_published_blocks = 0
