"""Decode-path matrix-vector products by weight type, float32 (exact) vs int8 activations. Prints JSON.

    python bench/bench_kernels.py [--rows 4096] [--cols 2048] [--threads 2] [--repeats 200]

One token through an (rows, cols) matrix of random blocks of every GGML type we compute, with the
kernels that mode dispatches to at T=1 (matmul_f32.matmul_rows_f32 via dot_row, and
matmul_q8.matmul_q8), each timed as the median of `repeats` calls after a warm-up. The weight
bytes read per call over that time is the effective bandwidth; compare with
../shared/tools/membw.py. `int8_over_f32` above 1 means the int8 kernel is the slower one: the
types where it is below 1 are ggml_types.INT8_ACTIVATION_TYPES, the fast mode's dispatch.
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
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=2048, help="a multiple of 256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()

    from engine.runtime import configure
    configure(args.threads)
    from bench_engine import cpu_name
    from gguf_factory import random_blocks

    from engine.kernels import ggml_types as G
    from engine.kernels.cpu.matmul_f32 import block_sums, matmul_rows_f32
    from engine.kernels.cpu.matmul_q8 import matmul_q8, quantize_rows
    from engine.quants import QUANT_TYPES

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, args.cols)).astype(np.float32)
    out = np.empty((1, args.rows), np.float32)

    def median_ms(run) -> float:
        run()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return float(np.median(times)) * 1e3

    results = {}
    for ggml_type in G.INT8_KERNEL_TYPES:
        w = random_blocks(ggml_type, args.rows, args.cols, rng)

        def exact(w=w, ggml_type=ggml_type):
            matmul_rows_f32(w, ggml_type, x, block_sums(x), out)

        def int8(w=w, ggml_type=ggml_type):
            matmul_q8(w, ggml_type, quantize_rows(x), out)
        f32_ms, int8_ms = median_ms(exact), median_ms(int8)
        results[QUANT_TYPES[ggml_type].name] = {
            "f32_ms": round(f32_ms, 3), "int8_ms": round(int8_ms, 3),
            "f32_GB_s": round(w.nbytes / f32_ms / 1e6, 1), "int8_GB_s": round(w.nbytes / int8_ms / 1e6, 1),
            "int8_over_f32": round(int8_ms / f32_ms, 2),
            "fast_mode_uses_int8": ggml_type in G.INT8_ACTIVATION_TYPES,
        }
    print(json.dumps({"bench": "kernels", "cpu": cpu_name(), "threads": args.threads, "rows": args.rows,
                      "cols": args.cols, "types": results}, indent=2))


if __name__ == "__main__":
    main()
