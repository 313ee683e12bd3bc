"""Continuous batching: token budget, chunked prefill, decode first, preemption of the newest."""
from engine.block_pool import BlockPool
from engine.kv_cache_manager import KVCacheManager
from engine.scheduler import Scheduler
from engine.sequence import RequestOptions, Sequence, SequenceStatus


def setup(llm, num_blocks=64, budget=512, max_seqs=8):
    kv = KVCacheManager(BlockPool(num_blocks, 16), "fp")
    return Scheduler(kv, budget, max_seqs)


def add(sched, llm, rid, n, arrival):
    start = 1000 * (arrival + 1)                          # distinct prompts: no prefix sharing
    seq = Sequence(rid, list(range(start, start + n)), RequestOptions(), llm.tokenizer, 4096, arrival)
    sched.add(seq)
    return seq


def complete(sched, out):
    """What the engine does after the model ran: count tokens computed, add a token where a
    sequence reached its end, publish the full blocks."""
    for rid, n in out.chunks:
        seq = sched.sequences[rid]
        seq.num_computed_tokens += n
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(5)
        sched.kv.publish_computed_blocks(seq)


def test_long_prompts_are_chunked_under_the_budget(llm):
    sched = setup(llm)
    a = add(sched, llm, "a", 300, 0)
    add(sched, llm, "b", 300, 1)
    add(sched, llm, "c", 300, 2)
    out = sched.schedule()
    assert out.chunks == [("a", 300), ("b", 212)]
    complete(sched, out)
    out = sched.schedule()
    assert out.chunks == [("a", 1), ("b", 88), ("c", 300)] and a.num_tokens == 301


def test_decoding_sequences_go_before_new_prefill(llm):
    sched = setup(llm, budget=64)
    add(sched, llm, "a", 10, 0)
    complete(sched, sched.schedule())
    add(sched, llm, "long", 200, 1)
    out = sched.schedule()
    assert out.chunks == [("a", 1), ("long", 63)]


def test_the_newest_running_sequence_is_preempted_when_blocks_run_out(llm):
    sched = setup(llm, num_blocks=4, budget=512, max_seqs=8)
    a = add(sched, llm, "a", 32, 0)                       # 2 blocks
    b = add(sched, llm, "b", 32, 1)                       # 2 blocks: the pool is full
    out = sched.schedule()
    assert out.chunks == [("a", 32), ("b", 32)]
    complete(sched, out)                                  # both now need a third block
    out = sched.schedule()
    assert out.preempted == ["b"] and out.chunks == [("a", 1)]
    assert b.status is SequenceStatus.WAITING and sched.waiting[0] is b and b.num_computed_tokens == 0
    # b's blocks were freed tail first, so a's third block is b's second one (evicted)
    assert a.block_table == [0, 1, 3] and b.block_table == []
    sched.finish(a)
    out = sched.schedule()            # b comes back: its first block is still cached, 17 tokens to compute
    assert out.chunks == [("b", 17)] and b.block_table[0] == 2
    assert sched.num_preemptions == 1


def test_max_num_seqs(llm):
    sched = setup(llm, max_seqs=2)
    for i in range(4):
        add(sched, llm, f"r{i}", 10, i)
    out = sched.schedule()
    assert [rid for rid, _ in out.chunks] == ["r0", "r1"] and len(sched.waiting) == 2


def test_a_prompt_whose_blocks_fit_passes_a_head_that_does_not_fit_for_a_bounded_time(llm):
    sched = setup(llm, num_blocks=10, budget=512, max_seqs=8)
    sched.max_head_passes = 2
    holder = add(sched, llm, "holder", 60, 0)             # 4 blocks, running
    complete(sched, sched.schedule())
    add(sched, llm, "big", 112, 1)                        # 7 blocks: 6 are free
    small = add(sched, llm, "small", 16, 2)               # 1 block
    out = sched.schedule()
    assert out.chunks == [("holder", 1), ("small", 16)]  # small goes first, big keeps its place
    assert [s.request_id for s in sched.waiting] == ["big"]
    complete(sched, out)
    small2 = add(sched, llm, "small2", 8, 3)
    out = sched.schedule()                                # big passed over a second time
    assert out.chunks == [("holder", 1), ("small", 1), ("small2", 8)]
    complete(sched, out)
    add(sched, llm, "small3", 8, 4)
    out = sched.schedule()                                # a third time is too many: small3 waits behind big
    assert out.chunks == [("holder", 1), ("small", 1), ("small2", 1)]
    assert [s.request_id for s in sched.waiting] == ["big", "small3"]
    for seq in (holder, small, small2):
        sched.finish(seq)
    out = sched.schedule()
    assert out.chunks == [("big", 112), ("small3", 8)]



def test_a_step_that_decodes_holds_prompt_chunks_to_the_prefill_limit(llm):
    sched = setup(llm, budget=512)
    sched.prefill_limit = lambda decode_rows: 40 - 10 * decode_rows
    add(sched, llm, "a", 10, 0)
    out = sched.schedule()
    assert out.chunks == [("a", 10)]                      # nothing decodes: the whole budget
    complete(sched, out)
    add(sched, llm, "long", 300, 1)
    short = add(sched, llm, "short", 20, 2)
    out = sched.schedule()
    assert out.chunks == [("a", 1), ("long", 30)]         # 40 - 10 for one decode row
    complete(sched, out)
    out = sched.schedule()
    assert out.chunks == [("a", 1), ("long", 30)] and short in sched.waiting
    complete(sched, out)
    sched.prefill_limit = lambda decode_rows: 0
    assert sched.schedule().chunks == [("a", 1), ("long", 16)]   # at least a block: the prompt advances
    assert sched.prefill_room(0) == 512 and sched.prefill_room(3) == 16


def test_decoding_sequences_go_before_a_prompt_chunk_ahead_of_them(llm):
    sched = setup(llm, budget=512)
    add(sched, llm, "a", 10, 0)
    add(sched, llm, "long", 600, 1)
    out = sched.schedule()
    assert out.chunks == [("a", 10), ("long", 502)]
    complete(sched, out)
    sched.running.reverse()                               # the prefilling one first (a readmission)
    sched.prefill_limit = lambda decode_rows: 50
    assert sched.schedule().chunks == [("a", 1), ("long", 50)]
