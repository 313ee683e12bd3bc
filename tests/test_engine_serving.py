"""The serving engine with the real model: continuous batching, preemption and prefix caching
(local, and through a real Redis) are invisible in the output."""
import numpy as np
import pytest

from engine.block_store import encode_block, store_namespace
from engine.llm_engine import EngineConfig, GenerationError, LLMEngine
from engine.sampling import GREEDY
from engine.sequence import RequestOptions
from engine.stopping import FinishReason, StoppingCriteria
from services.common.keys import Keys
from services.common.kv_store import RedisBlockStore
from services.common.redis_client import scan_keys


def run_all(engine, prompts, options):
    """Every prompt's events, run in one continuous batch; options: one for all, or a list of one each."""
    for i, ids in enumerate(prompts):
        engine.add_request(f"r{i}", ids, options[i] if isinstance(options, list) else options)
    events = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_work():
        for out in engine.step():
            events[out.request_id] += out.events
    return [events[f"r{i}"] for i in range(len(prompts))]


def token_ids(events):
    return [e.token_id for e in events]


@pytest.fixture(scope="module")
def prompts(hf_reference):
    return [c["prompt_ids"] for c in hf_reference["chat"] + hf_reference["raw"]]


def test_batching_is_invisible(llm, prompts, hf_reference):
    """8 different prompts in one continuous batch give each its own greedy tokens: the same as
    run alone, and transformers' reference tokens."""
    options = RequestOptions(GREEDY, StoppingCriteria(48))
    together = run_all(LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=64)), prompts, options)
    for ids, events, case in zip(prompts, together, hf_reference["chat"] + hf_reference["raw"], strict=True):
        alone = run_all(LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=16)), [ids], options)[0]
        assert token_ids(events) == token_ids(alone) == case["greedy_48"]


def test_preemption_and_recompute_are_invisible(llm, prompts):
    """A pool too small for all eight forces preemptions; outputs do not change."""
    options = RequestOptions(GREEDY, StoppingCriteria(48, ignore_eos=True))
    roomy = run_all(LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=64)), prompts, options)
    tight = LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=12))
    squeezed = run_all(tight, prompts, options)
    assert tight.scheduler.num_preemptions > 0
    assert [token_ids(e) for e in squeezed] == [token_ids(e) for e in roomy]
    assert tight.pool.num_free_blocks == 12


def long_prompt(llm):
    text = ("The history of the city goes back many centuries, to a small settlement on the river. " * 6)
    return llm.encode(text)                      # about 100 tokens: six full blocks and a remainder


def first_token_logprobs(engine, ids, rid):
    engine.add_request(rid, ids, RequestOptions(GREEDY, StoppingCriteria(1), logprobs=True, top_logprobs=20))
    events = []
    while engine.has_work():
        for out in engine.step():
            events += out.events
    return events[0]


def assert_same_logits(a, b):
    assert [i for i, _ in a.top_logprobs] == [i for i, _ in b.top_logprobs]
    np.testing.assert_allclose([v for _, v in a.top_logprobs], [v for _, v in b.top_logprobs], atol=2e-5)


def test_local_prefix_hit_computes_only_the_uncached_tokens(llm):
    ids = long_prompt(llm)
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=64))
    cold = first_token_logprobs(engine, ids, "cold")
    computed = engine.stats.computed_prompt_tokens
    assert computed == len(ids) and cold.cached_prompt_tokens == 0
    warm = first_token_logprobs(engine, ids, "warm")
    cached = (len(ids) - 1) // 16 * 16
    assert warm.cached_prompt_tokens == cached
    assert engine.stats.computed_prompt_tokens - computed == len(ids) - cached
    assert_same_logits(warm, cold)


@pytest.fixture
def block_store(redis_client, key_prefix, llm):
    return RedisBlockStore(redis_client, Keys(key_prefix), llm.model.fingerprint, ttl_s=600)


def test_redis_hit_on_another_engine_gives_the_same_logits(llm, block_store):
    ids = long_prompt(llm)
    cold = first_token_logprobs(LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=32)), ids, "c")
    writer = LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=32), block_store)
    first_token_logprobs(writer, ids, "w")
    writer.flush_exports()
    assert writer.stats.blocks_exported == len(ids) // 16
    reader = LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=32), block_store)
    hit = first_token_logprobs(reader, ids, "r")
    cached = (len(ids) - 1) // 16 * 16
    assert reader.stats.remote_blocks_imported == cached // 16
    assert reader.stats.computed_prompt_tokens == len(ids) - cached and hit.cached_prompt_tokens == cached
    assert_same_logits(hit, cold)
    writer.close()
    reader.close()


def test_a_float16_cache_holds_twice_the_blocks_and_shares_them_through_redis(llm, redis_client, key_prefix):
    """kv_cache_dtype="float16": twice the blocks in the same memory, blocks half the bytes in
    Redis under their own names (store_namespace), imported bit for bit by another float16 engine:
    the same logits as that engine computing the prompt itself."""
    config = EngineConfig(kv_cache_mb=32, kv_cache_dtype="float16")
    store = RedisBlockStore(redis_client, Keys(key_prefix), store_namespace(llm.model.fingerprint, "float16"), 600)
    half = LLMEngine(llm.model, llm.tokenizer, config)
    full = LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=32))
    assert half.pool.num_blocks // 2 == full.pool.num_blocks        # 32 MB // the block's bytes
    assert 2 * half.kv_cache.bytes_per_block == full.kv_cache.bytes_per_block
    ids = long_prompt(llm)
    cold = first_token_logprobs(LLMEngine(llm.model, llm.tokenizer, config), ids, "c")
    writer = LLMEngine(llm.model, llm.tokenizer, config, store)
    first_token_logprobs(writer, ids, "w")
    writer.flush_exports()
    stored = scan_keys(redis_client, f"{key_prefix}kv:*")
    assert len(stored) == len(ids) // 16 and all(b"-float16:" in key for key in stored)
    cfg = llm.model.config
    payload = 2 * 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 16           # halves, keys and values
    assert {len(redis_client.get(key)) for key in stored} == {payload + 68}             # 68: the header
    reader = LLMEngine(llm.model, llm.tokenizer, config, store)
    hit = first_token_logprobs(reader, ids, "r")
    cached = (len(ids) - 1) // 16 * 16
    assert reader.stats.remote_blocks_imported == cached // 16 and reader.stats.remote_blocks_rejected == 0
    assert_same_logits(hit, cold)
    writer.close()
    reader.close()


def poison(kind, llm, block_hash, good: bytes):
    cfg = llm.model.config
    if kind == "bad checksum":
        data = bytearray(good)
        data[-5] ^= 0xFF
        return bytes(data)
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "other model":
        k = np.zeros((cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 16), np.float32)
        return encode_block("another-model", block_hash, k, np.zeros((cfg.num_layers, cfg.num_kv_heads, 16,
                                                                      cfg.head_dim), np.float32))
    if kind == "wrong shape":
        k = np.zeros((cfg.num_layers - 1, cfg.num_kv_heads, cfg.head_dim, 16), np.float32)
        return encode_block(llm.model.fingerprint, block_hash, k, np.zeros((cfg.num_layers - 1, cfg.num_kv_heads,
                                                                            16, cfg.head_dim), np.float32))
    if kind == "float16 block":                      # another worker's cache type: not readable here
        k = np.zeros((cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 16), np.uint16)
        return encode_block(llm.model.fingerprint, block_hash, k, np.zeros((cfg.num_layers, cfg.num_kv_heads, 16,
                                                                            cfg.head_dim), np.uint16))
    if kind == "not a block":
        return b"\x80\x04pickle? no."
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["bad checksum", "truncated", "other model", "wrong shape", "float16 block",
                                  "not a block"])
def test_poisoned_redis_entries_are_rejected_and_recomputed(llm, block_store, kind):
    ids = long_prompt(llm)
    cold = first_token_logprobs(LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=32)), ids, "c")
    writer = LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=32), block_store)
    first_token_logprobs(writer, ids, "w")
    writer.flush_exports()
    writer.close()
    hashes = scan_keys(block_store.redis, f"{block_store.keys.prefix}kv:*")
    assert hashes
    for key in hashes:
        block_hash = bytes.fromhex(key.decode().rsplit(":", 1)[1])
        block_store.redis.set(key, poison(kind, llm, block_hash, block_store.redis.get(key)))
    reader = LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=32), block_store)
    hit = first_token_logprobs(reader, ids, "r")
    assert reader.stats.remote_blocks_rejected >= 1 and reader.stats.remote_blocks_imported == 0
    assert reader.stats.computed_prompt_tokens == len(ids)
    assert_same_logits(hit, cold)
    reader.close()


def test_abort_frees_the_blocks_and_reports_cancelled(llm):
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=32))
    engine.add_request("a", long_prompt(llm), RequestOptions(GREEDY, StoppingCriteria(100, ignore_eos=True)))
    for _ in range(3):
        engine.step()
    assert engine.pool.num_free_blocks < 32
    out = engine.abort("a")
    assert out.finished and out.events[-1].finish_reason is FinishReason.CANCELLED
    assert engine.pool.num_free_blocks == 32 and not engine.has_work()
    assert engine.abort("a") is None


def test_requests_that_can_never_fit_are_refused(llm):
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=4, max_context=1024))
    with pytest.raises(GenerationError, match="KV cache"):
        engine.add_request("big", list(range(100)), RequestOptions(stopping=StoppingCriteria(max_new_tokens=100)))
    engine.add_request("ok", list(range(30)), RequestOptions(stopping=StoppingCriteria(max_new_tokens=30)))
    with pytest.raises(GenerationError, match="already running"):
        engine.add_request("ok", [1, 2], RequestOptions())


def test_the_prefill_limit_keeps_a_decoding_step_within_its_target_by_the_learnt_costs(llm):
    assert LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=64)).scheduler.prefill_limit is None
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=64, step_target_s=0.5))
    assert engine.scheduler.prefill_limit == engine.prefill_limit
    assert engine.prefill_limit(1) == 511                 # no step run yet: the budget's rest
    engine.step_costs.record(1, 0.05)
    assert engine.prefill_limit(1) == 180                 # above what ran, 5 % a row: 0.05 (1 + 0.05 n) <= 0.5
    engine.step_costs.record(257, 1.0)
    assert engine.prefill_limit(1) == 121                 # between, a straight line: 0.05 + 0.95 n / 256 <= 0.5
    for _ in range(20):                                   # decode steps grow slow (a moving average)
        engine.step_costs.record(1, 0.6)
    assert engine.prefill_limit(1) == 0                   # the decode alone is over: the scheduler's one block
