"""Mixture-of-Experts against dense models on our CPU kernels: decode and prefill tokens/s at 1 and
16 sequences. Prints JSON.

    python bench/bench_moe.py [--hidden 1024] [--layers 8] [--experts 8] [--top-k 2] [--expert-ffn 1536]
                              [--type Q4_K] [--threads 2] [--fast]

Three random-weight models of one shape but the FFN (GGUF files in a temporary folder), measured
in turns, step by step:
- moe: `experts` experts of width expert_ffn, top-k (Mixtral's layout, arch "llama" with experts);
- dense_active: one FFN of width top_k * expert_ffn: the FLOPs and weight bytes a token touches;
- dense_total: one FFN of width experts * expert_ffn: the parameters the MoE holds.
Decode: one token per sequence per step (16 sequences: one forward of 16 rows, each its own
sequence, as continuous batching runs them) after a 32-token prompt: the median of 32 steps.
Prefill: 256 tokens of one sequence, or 16 sequences of 32 tokens, in one forward (best of 3).
An MoE decode step of 16 sequences reads each expert once for all the tokens routed to it
(kernels/cpu/moe.py), so its cost per step grows with the experts hit, not the tokens.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_engine import cpu_name  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = 32
DECODE_STEPS = 32
PREFILL_ONE = 256
PREFILL_REPEATS = 3        # the best of: a prefill is one forward, easily slowed by another process


def _timed(model, batch, kv) -> float:
    t0 = time.perf_counter()
    model.forward(batch, kv)
    return time.perf_counter() - t0


def batch_of(sequences: int, start: int, length: int, blocks_per_seq: int, rng):
    """A ForwardBatch of `length` tokens for each of `sequences` sequences from position start."""
    from engine.model import ForwardBatch
    n = sequences * length
    seq_ids = np.repeat(np.arange(sequences, dtype=np.int32), length)
    pos = np.tile(np.arange(start, start + length, dtype=np.int32), sequences)
    tables = np.arange(sequences * blocks_per_seq, dtype=np.int32).reshape(sequences, blocks_per_seq)
    slots = (tables[seq_ids, pos // 16] * 16 + pos % 16).astype(np.int32)
    rows = np.arange(length - 1, n, length, dtype=np.int32)           # each sequence's last token
    return ForwardBatch(rng.integers(1, 4000, n).astype(np.int32), pos, seq_ids, tables, slots, rows)


def measure(paths: dict[str, Path], fast: bool) -> dict:
    """tok/s of each model. The models take turns step by step, so another process loading the
    machine for a while slows them alike and the ratios hold."""
    from engine.model import DecoderModel
    models = {name: DecoderModel.load(path, int8_activations=fast) for name, path in paths.items()}
    rng = np.random.default_rng(0)
    blocks = (max(PREFILL_ONE, PROMPT + DECODE_STEPS) + 15) // 16
    result = {name: {"weights_mb": round(path.stat().st_size / 2**20, 1)} for name, path in paths.items()}
    for sequences in (1, 16):
        caches = {name: model.new_kv_cache(num_blocks=sequences * blocks, block_size=16)
                  for name, model in models.items()}
        for name, model in models.items():
            model.forward(batch_of(sequences, 0, PROMPT, blocks, rng), caches[name])
            model.forward(batch_of(sequences, PROMPT, 1, blocks, rng), caches[name])      # compile / warm
        steps = {name: [] for name in models}
        for step in range(DECODE_STEPS):
            batch = batch_of(sequences, PROMPT + 1 + step, 1, blocks, rng)
            for name, model in models.items():
                steps[name].append(_timed(model, batch, caches[name]))
        length = PREFILL_ONE if sequences == 1 else PROMPT
        batch = batch_of(sequences, 0, length, blocks, rng)
        prefill = {name: [] for name in models}
        for _ in range(PREFILL_REPEATS):
            for name, model in models.items():
                prefill[name].append(_timed(model, batch, caches[name]))
        for name in models:
            # decode: the median step; prefill: the best of PREFILL_REPEATS single forwards
            result[name][f"decode_tok_s_{sequences}_seq"] = round(sequences / float(np.median(steps[name])), 1)
            result[name][f"prefill_tok_s_{sequences}_seq"] = round(sequences * length / min(prefill[name]), 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--expert-ffn", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--type", default="Q4_K")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fast", action="store_true", help="int8 activations in decode-sized steps")
    args = ap.parse_args()
    from engine.runtime import configure
    configure(args.threads)
    from gguf_factory import write_tiny_llama

    shape = dict(matrix_type=args.type, embedding_type=args.type, vocab=args.vocab, hidden=args.hidden,
                 layers=args.layers, heads=args.hidden // 64, kv_heads=max(1, args.hidden // 256), tied=False,
                 context=512)
    variants = {
        "moe": dict(ffn=args.expert_ffn, experts=args.experts, experts_used=args.top_k),
        "dense_active": dict(ffn=args.top_k * args.expert_ffn),
        "dense_total": dict(ffn=args.experts * args.expert_ffn),
    }
    out = {"cpu": cpu_name(), "threads": args.threads, "mode": "fast" if args.fast else "exact",
           "shape": f"hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, {args.type}; moe: "
                    f"{args.experts} experts x {args.expert_ffn} wide, top-{args.top_k}"}
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: write_tiny_llama(Path(folder) / f"{name}.gguf", **shape, **extra)
                 for name, extra in variants.items()}
        out |= measure(paths, args.fast)
    for key in out["moe"]:
        if key.endswith("_seq"):
            out.setdefault("moe_over_dense_active", {})[key] = round(out["moe"][key] / out["dense_active"][key], 2)
            out.setdefault("moe_over_dense_total", {})[key] = round(out["moe"][key] / out["dense_total"][key], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
