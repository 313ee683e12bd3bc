"""Block pool and KV-cache manager: exact block ids, hash chain, eviction order, reference counts."""
import pytest

from engine.block_pool import BlockPool, NoFreeBlocks, chain_hash, root_hash
from engine.kv_cache_manager import KVCacheManager
from engine.sequence import RequestOptions, Sequence

BS = 16


def test_chain_hash_is_stable_and_chained():
    root = root_hash("model-a")
    h1 = chain_hash(root, list(range(16)))
    assert h1 == chain_hash(root_hash("model-a"), list(range(16)))          # deterministic across calls
    assert h1.hex() == chain_hash(root, range(16)).hex() and len(h1) == 16
    assert chain_hash(root_hash("model-b"), list(range(16))) != h1            # another model
    assert chain_hash(h1, list(range(16))) != h1                              # the parent matters
    assert chain_hash(root, list(range(1, 17))) != h1


def test_allocation_and_reverse_free_order():
    pool = BlockPool(6, BS)
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.free_queue() == [3, 4, 5]
    pool.free([0, 1, 2])                        # a sequence's tail is reused first
    assert pool.free_queue() == [3, 4, 5, 2, 1, 0]
    assert pool.allocate(4) == [3, 4, 5, 2]
    with pytest.raises(NoFreeBlocks):
        pool.allocate(3)


def test_reference_counts_and_revival():
    pool = BlockPool(4, BS)
    a, b = pool.allocate(2)
    pool.cache(a, b"\x01" * 16, range(16))
    pool.touch([a])                             # a second sequence shares block a
    assert pool.blocks[a].ref_count == 2
    pool.free([a])
    assert pool.blocks[a].ref_count == 1 and a not in pool.free_queue()
    pool.free([a, b])
    assert pool.free_queue() == [2, 3, b, a]
    assert pool.lookup(b"\x01" * 16, range(16)) == a           # freed but still cached
    pool.touch([a])                                             # revived by a hit
    assert a not in pool.free_queue() and pool.blocks[a].ref_count == 1
    with pytest.raises(RuntimeError):
        pool.free([b, b])


def test_eviction_is_least_recently_freed_first():
    pool = BlockPool(3, BS)
    ids = pool.allocate(3)
    for i, block_id in enumerate(ids):
        pool.cache(block_id, bytes([i]) * 16, [i] * 16)
    pool.free([ids[1]])
    pool.free([ids[0]])
    pool.free([ids[2]])
    assert pool.free_queue() == [ids[1], ids[0], ids[2]]
    (reused,) = pool.allocate(1)
    assert reused == ids[1] and pool.num_evictions == 1
    assert pool.lookup(bytes([1]) * 16, [1] * 16) is None                 # evicted with its reuse
    assert pool.lookup(bytes([0]) * 16, [0] * 16) == ids[0]


def test_a_hash_collision_is_a_miss_not_a_wrong_block():
    pool = BlockPool(2, BS)
    (a,) = pool.allocate(1)
    pool.cache(a, b"\x07" * 16, [1] * 16)
    assert pool.lookup(b"\x07" * 16, [2] * 16) is None


def make_seq(llm, tokens, rid="r"):
    return Sequence(rid, list(tokens), RequestOptions(), llm.tokenizer, max_context=4096, arrival=0)


def test_cached_prefix_hits_full_blocks_and_leaves_the_last_token(llm):
    pool = BlockPool(16, BS)
    kv = KVCacheManager(pool, "fp")
    first = make_seq(llm, range(100, 148))                    # 48 tokens: 3 full blocks
    kv.admit(first, [])
    assert kv.allocate_slots(first, 48) and first.block_table == [0, 1, 2]
    first.num_computed_tokens = 48
    assert [b for b, _, _ in kv.publish_computed_blocks(first)] == [0, 1, 2]

    same = make_seq(llm, range(100, 148), "same")             # identical: the last block is recomputed
    assert kv.cached_prefix(same) == [0, 1]
    longer = make_seq(llm, list(range(100, 148)) + [7], "longer")
    assert kv.cached_prefix(longer) == [0, 1, 2]
    diverges = make_seq(llm, list(range(100, 120)) + [5] * 30, "diverges")   # differs inside block 1
    assert kv.cached_prefix(diverges) == [0]

    kv.admit(longer, kv.cached_prefix(longer))
    assert longer.num_computed_tokens == 48 and longer.num_cached_prompt_tokens == 48
    assert kv.allocate_slots(longer, 1) and longer.block_table == [0, 1, 2, 3]
    assert [pool.blocks[b].ref_count for b in (0, 1, 2, 3)] == [2, 2, 2, 1]
    kv.free(first)
    kv.free(longer)
    assert pool.num_free_blocks == 16 and kv.stats.hit_tokens == 48


def test_allocate_slots_refuses_without_partial_allocation(llm):
    pool = BlockPool(3, BS)
    kv = KVCacheManager(pool, "fp")
    seq = make_seq(llm, range(200))
    kv.admit(seq, [])
    assert not kv.allocate_slots(seq, 64)                     # 4 blocks wanted, 3 exist
    assert seq.block_table == [] and pool.num_free_blocks == 3
