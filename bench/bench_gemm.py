"""Batch-path matrix products: the 4x4 dot-product tiles vs the outer product over token vectors,
by weight type and token count. Prints JSON.

    python bench/bench_gemm.py [--rows 4864] [--cols 1024] [--tokens 4,8,16,32,64,128,512] [--threads 2]

Each (type, T) runs matmul_f32's matmul_tiles_f32 and matmul_token_vectors_f32 on one random
(rows, cols) matrix (the default is Qwen2.5-0.5B's FFN up/gate shape, cols rounded to the
K-quants' 256) and reports GFLOP/s (2 T rows cols / the best of `repeats` calls after a warm-up)
and token vectors over tiles. matmul.OUTER_PRODUCT_GEMM and TOKEN_VECTOR_MIN_TOKENS are the
dispatch this measures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4864)
    ap.add_argument("--cols", type=int, default=1024, help="a multiple of 256")
    ap.add_argument("--tokens", default="4,8,16,32,64,128,512")
    ap.add_argument("--types", default="Q4_0,Q4_1,Q5_0,Q8_0,Q4_K,Q6_K")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from engine.runtime import configure
    configure(args.threads)
    from bench_engine import cpu_name
    from gguf_factory import random_blocks

    from engine.kernels import ggml_types as G
    from engine.kernels.cpu import matmul as dispatch
    from engine.kernels.cpu.matmul_f32 import matmul_tiles_f32, matmul_token_vectors_f32

    rng = np.random.default_rng(0)
    kernels = {"tiles": matmul_tiles_f32, "token_vectors": matmul_token_vectors_f32}
    results = {}
    for name in args.types.split(","):
        ggml_type = getattr(G, name)
        w = random_blocks(ggml_type, args.rows, args.cols, rng)
        for T in (int(t) for t in args.tokens.split(",")):
            x = rng.standard_normal((T, args.cols)).astype(np.float32)
            out = np.empty((T, args.rows), np.float32)
            row = {}
            for label, kernel in kernels.items():
                kernel(w, ggml_type, x, out)                    # compile / warm up
                best = min(_timed(kernel, w, ggml_type, x, out) for _ in range(args.repeats))
                row[f"{label}_GFLOP_s"] = round(2 * T * args.rows * args.cols / best / 1e9, 1)
            row["token_vectors_over_tiles"] = round(row["token_vectors_GFLOP_s"] / row["tiles_GFLOP_s"], 2)
            results[f"{name} T={T}"] = row
    print(json.dumps({"bench": "gemm", "cpu": cpu_name(), "threads": args.threads, "rows": args.rows,
                      "cols": args.cols, "outer_product_gemm": dispatch.OUTER_PRODUCT_GEMM,
                      "token_vector_min_tokens": dispatch.TOKEN_VECTOR_MIN_TOKENS,
                      "results": results}, indent=2))


def _timed(kernel, w, ggml_type, x, out) -> float:
    t0 = time.perf_counter()
    kernel(w, ggml_type, x, out)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
