"""Serving-engine benchmark: continuous batching and the prefix cache. Prints JSON.

    python bench/bench_serving.py [--model NAME] [--threads 2] [--tokens 64] [--fast] [--kv-cache-dtype float16]

- Aggregate decode tok/s at 1, 4, 16 and 64 concurrent sequences: that many 16-token prompts
  admitted together, then the decode steps timed once every sequence has its first token
  (tokens generated / seconds).
- Time to first token of a 1000-token prompt: cold; with a local prefix hit (the same engine ran
  it before); and with a Redis hit on an engine that never computed it (its blocks written to a
  real redis-server by another engine, as one worker's are read by another).
- The read-bandwidth ceiling of one sequence's decode, as bench_engine.py prints it: `membw` GB/s
  over the bytes of weights a token reads, and one sequence's share of it.
- A long prompt beside running streams (`--beside-only` runs just this): 4 sequences decoding,
  then a 2000-token prompt (an Ask's size) arrives; the streams' inter-token gaps while it
  prefills, and its time to first token, for each step time target (EngineConfig.step_target_s,
  the worker's MESHLLM_STEP_TARGET_S; 0: every step takes the whole 512-token budget). The engine
  first serves one such prompt unmeasured, so that its step costs are learnt, as a worker's are.
"""
from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np


def decode_throughput(llm, n_seqs: int, tokens: int, kv_dtype: str = "float32") -> float:
    from engine.llm_engine import EngineConfig, LLMEngine
    from engine.sampling import GREEDY
    from engine.sequence import RequestOptions
    from engine.stopping import StoppingCriteria
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=512, max_num_seqs=max(n_seqs, 1),
                                                              kv_cache_dtype=kv_dtype))
    rng = random.Random(n_seqs)
    options = RequestOptions(GREEDY, StoppingCriteria(tokens, ignore_eos=True))
    for i in range(n_seqs):
        engine.add_request(f"r{i}", [rng.randint(100, 40000) for _ in range(16)], options)
    # the prefill steps, not timed: 64 prompts of 16 tokens take more than one step's token
    # budget, and timing the second one would count a prefill as decode
    decoding: set[str] = set()
    while len(decoding) < n_seqs:
        decoding.update(o.request_id for o in engine.step() if o.events)
    generated = 0
    t0 = time.perf_counter()
    while engine.has_work():
        generated += sum(len(o.events) for o in engine.step())
    return generated / (time.perf_counter() - t0)


def first_token_seconds(engine, ids, rid) -> float:
    from engine.sampling import GREEDY
    from engine.sequence import RequestOptions
    from engine.stopping import StoppingCriteria
    t0 = time.perf_counter()
    engine.add_request(rid, ids, RequestOptions(GREEDY, StoppingCriteria(1)))
    while engine.has_work():
        if engine.step():
            elapsed = time.perf_counter() - t0
    while engine.has_work():
        engine.step()
    return elapsed


def prefix_cache_ttft(llm, kv_dtype: str = "float32") -> dict:
    import redis

    from engine.block_store import store_namespace
    from engine.llm_engine import EngineConfig, LLMEngine
    from services.common.keys import Keys
    from services.common.kv_store import RedisBlockStore
    from services.common.redis_server import RedisServer

    rng = random.Random(1000)
    ids = [rng.randint(100, 40000) for _ in range(1000)]
    config = EngineConfig(kv_cache_mb=512, max_num_batched_tokens=1024, kv_cache_dtype=kv_dtype)
    with RedisServer(maxmemory="1gb") as server:
        store = RedisBlockStore(redis.Redis.from_url(server.url), Keys("bench:"),
                                store_namespace(llm.model.fingerprint, kv_dtype))
        first = LLMEngine(llm.model, llm.tokenizer, config, store)
        cold = first_token_seconds(first, ids, "cold")
        first.flush_exports()             # its blocks reach Redis before the next request arrives
        local = first_token_seconds(first, ids, "local")
        second = LLMEngine(llm.model, llm.tokenizer, config, store)
        remote = first_token_seconds(second, ids, "remote")
        assert second.stats.remote_blocks_imported == (len(ids) - 1) // 16
        first.close()
        second.close()
    return {"ttft_1000_cold_s": round(cold, 3), "ttft_1000_local_hit_s": round(local, 4),
            "ttft_1000_redis_hit_s": round(remote, 4), "redis_hit_speedup": round(cold / remote, 1),
            "local_hit_speedup": round(cold / local, 1)}


def long_prompt_beside_streams(llm, step_target_s: float, prompt_tokens: int = 2000, streams: int = 4,
                               kv_dtype: str = "float32") -> dict:
    from engine.llm_engine import EngineConfig, LLMEngine
    from engine.sampling import GREEDY
    from engine.sequence import RequestOptions
    from engine.stopping import StoppingCriteria
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=512, step_target_s=step_target_s,
                                                              kv_cache_dtype=kv_dtype))
    rng = random.Random(7)
    endless = RequestOptions(GREEDY, StoppingCriteria(4096, ignore_eos=True))
    for i in range(streams):
        engine.add_request(f"s{i}", [rng.randint(100, 40000) for _ in range(16)], endless)
    engine.step()
    measured = {}
    for name in ("learn", "long"):
        engine.add_request(name, [rng.randint(100, 40000) for _ in range(prompt_tokens)],
                           RequestOptions(GREEDY, StoppingCriteria(1)))
        gaps, t0 = [], time.perf_counter()
        while True:
            started = time.perf_counter()
            outputs = engine.step()
            gaps.append(time.perf_counter() - started)
            if any(o.request_id == name for o in outputs):
                break
        measured = {"ttft_s": round(time.perf_counter() - t0, 2), "steps": len(gaps),
                    "stream_gap_p50_s": round(float(np.median(gaps)), 3), "stream_gap_max_s": round(max(gaps), 3)}
    for i in range(streams):
        engine.abort(f"s{i}")
    return measured


def main() -> None:
    from engine.block_store import KV_DTYPES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="catalogue name or GGUF path (default: the default model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per sequence")
    ap.add_argument("--fast", action="store_true", help="int8 activations in decode")
    ap.add_argument("--kv-cache-dtype", default="float32", choices=tuple(KV_DTYPES))
    ap.add_argument("--beside-only", action="store_true", help="only the long prompt beside running streams")
    ap.add_argument("--step-targets", type=float, nargs="+", default=[0.0, 0.5, 0.25])
    args = ap.parse_args()
    from engine.runtime import configure
    configure(args.threads)
    from bench_engine import cpu_name, read_bandwidth

    from engine.gguf_file import GGUFFile
    from engine.llm import LLM
    from engine.model_registry import DEFAULT_MODEL, resolve_model
    weight_bytes = GGUFFile.open(str(resolve_model(args.model))).decode_weight_bytes()
    # before the engine's kernel threads exist: once they have run, they spin a while between calls
    probes = read_bandwidth(max(1, round(weight_bytes / 2**20)), args.threads)
    llm = LLM.load(args.model, int8_activations=args.fast)
    llm.warm_up()
    result = {"engine": "meshllm", "model": args.model or DEFAULT_MODEL, "cpu": cpu_name(),
              "mode": "fast" if args.fast else "exact", "threads": args.threads, "kv_cache_dtype": args.kv_cache_dtype,
              "decode_weights_read_MB": round(weight_bytes / 1e6, 1)}
    result.update(probes)
    result["decode_ceiling_tok_s"] = round(probes["membw_read_GB_s"] * 1e9 / weight_bytes, 1)
    result["long_prompt_beside_4_streams"] = {str(t): long_prompt_beside_streams(llm, t, kv_dtype=args.kv_cache_dtype)
                                              for t in args.step_targets}
    if args.beside_only:
        print(json.dumps(result, indent=2))
        return
    for n in (1, 4, 16, 64):
        runs = [decode_throughput(llm, n, args.tokens, args.kv_cache_dtype) for _ in range(2)]
        result[f"decode_tok_s_{n}_seqs"] = round(float(np.median(runs)), 1)
    for n in (4, 16, 64):
        result[f"speedup_{n}_seqs"] = round(result[f"decode_tok_s_{n}_seqs"] / result["decode_tok_s_1_seqs"], 2)
    result["decode_1_seq_share_of_ceiling"] = round(result["decode_tok_s_1_seqs"] / result["decode_ceiling_tok_s"], 2)
    result.update(prefix_cache_ttft(llm, args.kv_cache_dtype))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
