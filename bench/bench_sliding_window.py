"""Attention time per decode token at a long context: a sliding-window (local) layer against a
global one, with Gemma 3 270M's attention shape (4 query heads, 1 KV head, head_dim 256,
window 512). Prints JSON.

    python bench/bench_sliding_window.py [--context 4096] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from bench_engine import cpu_name  # bench/ is on sys.path when run as a script

from engine import runtime
from engine.kernels.cpu.attention import paged_attention_window, write_kv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    runtime.configure(args.threads)
    heads, kv_heads, hd, bs = 4, 1, 256, 16
    n = args.context
    num_blocks = n // bs + 1
    rng = np.random.default_rng(0)
    k_cache = np.zeros((num_blocks, kv_heads, hd, bs), np.float32)
    v_cache = np.zeros((num_blocks, kv_heads, bs, hd), np.float32)
    k = rng.standard_normal((n, kv_heads * hd)).astype(np.float32)
    write_kv(k, k.copy(), np.arange(n, dtype=np.int32), k_cache, v_cache)
    table = np.arange(num_blocks, dtype=np.int32)[None, :]
    q = rng.standard_normal((1, heads * hd)).astype(np.float32)
    out = np.empty_like(q)
    positions = np.array([n - 1], np.int32)
    seq = np.zeros(1, np.int32)
    result = {"cpu": cpu_name(), "threads": args.threads, "context": n, "window": args.window,
              "shape": f"{heads} q heads, {kv_heads} kv head, head_dim {hd}"}
    for name, window in (("global_us_per_token", 0), ("local_us_per_token", args.window)):
        paged_attention_window(q, k_cache, v_cache, table, seq, positions, 1 / 16, window, out)   # compile
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            paged_attention_window(q, k_cache, v_cache, table, seq, positions, 1 / 16, window, out)
            times.append(time.perf_counter() - t0)
        result[name] = round(float(np.median(times)) * 1e6, 1)
    result["global_over_local"] = round(result["global_us_per_token"] / result["local_us_per_token"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
