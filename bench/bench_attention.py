"""Paged attention of decode tokens, float32 against float16 KV caches. Prints JSON.

    python bench/bench_attention.py [--heads 14] [--kv-heads 2] [--head-dim 64] [--threads 2]

Each case is `sequences` decode tokens, each at the last position of its own `context`-token
sequence in consecutive blocks (block size 16), through kernels/cpu/attention.py's
paged_attention with random keys and values, once with a float32 cache and once with the same
values in a float16 cache (uint16 bits, EngineConfig.kv_cache_dtype="float16"): the best of five
rounds of `repeats` calls, in microseconds per call (one layer). The defaults are the 0.5B model's
heads (Qwen2.5: 14 query heads on 2 KV heads of 64).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

CASES = ((1, 256), (16, 256), (64, 256), (1, 2048), (16, 2048), (1, 8192))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()

    from engine.runtime import configure
    configure(args.threads)
    from bench_engine import cpu_name

    from engine.kernels.cpu.attention import paged_attention

    rng = np.random.default_rng(0)
    hd, bs = args.head_dim, 16
    results = []
    for sequences, context in CASES:
        blocks = -(-context // bs)
        k = rng.standard_normal((sequences * blocks, args.kv_heads, hd, bs), dtype=np.float32)
        v = rng.standard_normal((sequences * blocks, args.kv_heads, bs, hd), dtype=np.float32)
        caches = {"float32": (k, v),
                  "float16": (k.astype(np.float16).view(np.uint16), v.astype(np.float16).view(np.uint16))}
        tables = np.arange(sequences * blocks, dtype=np.int32).reshape(sequences, blocks)
        q = rng.standard_normal((sequences, args.heads * hd), dtype=np.float32)
        seq_ids = np.arange(sequences, dtype=np.int32)
        positions = np.full(sequences, context - 1, np.int32)
        out = np.empty_like(q)
        row = {"sequences": sequences, "context": context}
        for dtype, (kc, vc) in caches.items():
            paged_attention(q, kc, vc, tables, seq_ids, positions, hd ** -0.5, out)     # compile / warm
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(args.repeats):
                    paged_attention(q, kc, vc, tables, seq_ids, positions, hd ** -0.5, out)
                best = min(best, (time.perf_counter() - start) / args.repeats)
            row[f"{dtype}_us"] = round(best * 1e6, 1)
        row["float16_speedup"] = round(row["float32_us"] / row["float16_us"], 2)
        results.append(row)
    print(json.dumps({"bench": "attention", "cpu": cpu_name(), "threads": args.threads, "heads": args.heads,
                      "kv_heads": args.kv_heads, "head_dim": hd, "results": results}, indent=1))


if __name__ == "__main__":
    main()
