"""Where a decode step's time goes, by component. Prints JSON.

    python bench/bench_profile.py [--model NAME] [--seqs 1 16] [--context 256] [--steps 16] [--threads 2] [--fast]
                                   [--kv-cache-dtype float32|float16]
    python bench/bench_profile.py --verify-rows 1 2 3 4 6 9 [--model NAME] [--fast]

For each batch size, `seqs` sequences of `context` random prompt tokens are prefilled, then decode
steps run through the serving engine (LLMEngine.step: scheduling, building the batch, the forward,
sampling, bookkeeping), each step timed, and inside it the forward (one numba call for the decoder
stack, one for the output head) and the sampling. Then one decode step's batch is replayed kernel
by kernel: decoder_stack's body re-run from Python with the same kernels on the same arrays, each
group of calls timed (norms and residual adds, q/k/v projections, rope and the KV write,
attention, the o projection, the FFN, the output head). Figures are medians over the steps, in
milliseconds per step; `share_of_forward` divides each component by the replay's total (which
exceeds the real forward by the Python dispatch of ~10 calls per layer); `python_share_of_step` is
(step - forward - sampling) / step: the scheduler, the batch arrays, the detokenizer, events.
Dense decoders only (the MoE layer has its own bench: bench_moe.py).

--verify-rows: what a speculative verify step of one sequence costs by its rows (the last token
and rows - 1 drafts): each such step's batch is captured from the engine and replayed, the row
counts interleaved, the fastest of `--steps` replays kept (this measures what
speculation.StepCosts learns at run time); `ratio` is over one row.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

COMPONENTS = ("embed", "norms_residual", "qkv", "rope_kv_write", "attention", "o_proj", "ffn", "head")


def replay(model, batch, kv_cache) -> dict[str, float]:
    """One forward of `batch`, kernel by kernel as decoder_stack runs them; seconds per component."""
    from engine.architectures import FFN_GELU_TANH, ROPE_NEOX
    from engine.kernels.cpu.attention import paged_attention_window, write_kv
    from engine.kernels.cpu.llama import (
        ATTN_NORM,
        FFN_NORM,
        MATRICES_PER_LAYER,
        POST_ATTN_NORM,
        POST_FFN_NORM,
        W_DOWN,
        W_GATE,
        W_UP,
        WK,
        WO,
        WQ,
        WV,
        _rope,
        output_logits,
    )
    from engine.kernels.cpu.ops import add_bias, add_inplace, head_rms_norm, rms_norm
    from engine.kernels.cpu.projections import gated_ffn, project

    cfg, traits = model.config, model.config.traits
    times: dict[str, float] = defaultdict(float)

    def timed(component, fn, *args):
        start = time.perf_counter()
        fn(*args)
        times[component] += time.perf_counter() - start

    start = time.perf_counter()
    x, cos, sin = model.embed_and_rope(batch)
    times["embed"] += time.perf_counter() - start
    T = batch.num_tokens
    hd = kv_cache.k.shape[3]
    nq, nk = cfg.num_heads * hd, kv_cache.k.shape[2] * hd
    F = model.layer_weights[W_GATE].shape[0]
    h, proj = np.empty_like(x), np.empty_like(x)
    q, attn = np.empty((T, nq), np.float32), np.empty((T, nq), np.float32)
    k, v = np.empty((T, nk), np.float32), np.empty((T, nk), np.float32)
    gate, up = np.empty((T, F), np.float32), np.empty((T, F), np.float32)
    no_matrix, no_output = np.empty((0, 0), np.uint8), np.empty((0, 0), np.float32)
    int8 = model.int8_activations
    eps = cfg.rms_norm_eps
    neox, gelu = traits.rope_mode == ROPE_NEOX, traits.ffn_activation == FFN_GELU_TANH


    weights, norms = model.layer_weights, model.layer_norms
    for layer in range(cfg.num_layers):
        w, types = layer * MATRICES_PER_LAYER, model.layer_types[layer]
        timed("norms_residual", rms_norm, x, norms[layer, ATTN_NORM], eps, h)
        timed("qkv", project, h, int8, weights[w + WQ], types[WQ], q, weights[w + WK], types[WK], k,
              weights[w + WV], types[WV], v)
        if traits.qkv_bias:
            bias = model.qkv_bias[layer]
            for out, part in ((q, bias[:nq]), (k, bias[nq:nq + nk]), (v, bias[nq + nk:])):
                timed("qkv", add_bias, out, part)
        if traits.qk_norm:
            timed("norms_residual", head_rms_norm, q, cfg.num_heads, hd, model.head_norms[layer, 0], eps)
            timed("norms_residual", head_rms_norm, k, kv_cache.k.shape[2], hd, model.head_norms[layer, 1], eps)
        table = model.layer_rope[layer]
        timed("rope_kv_write", _rope, q, cfg.num_heads, hd, cos[table], sin[table], neox)
        timed("rope_kv_write", _rope, k, kv_cache.k.shape[2], hd, cos[table], sin[table], neox)
        timed("rope_kv_write", write_kv, k, v, batch.slot_mapping, kv_cache.k[layer], kv_cache.v[layer])
        timed("attention", paged_attention_window, q, kv_cache.k[layer], kv_cache.v[layer], batch.block_tables,
              batch.seq_ids, batch.positions, model.attention_scale, model.layer_window[layer], attn)
        timed("o_proj", project, attn, int8, weights[w + WO], types[WO], proj, no_matrix, 0, no_output,
              no_matrix, 0, no_output)
        if traits.post_norms:
            timed("norms_residual", rms_norm, proj, norms[layer, POST_ATTN_NORM], eps, proj)
        timed("norms_residual", add_inplace, x, proj)
        timed("norms_residual", rms_norm, x, norms[layer, FFN_NORM], eps, h)
        timed("ffn", gated_ffn, h, int8, weights[w + W_GATE], types[W_GATE], weights[w + W_UP], types[W_UP],
              weights[w + W_DOWN], types[W_DOWN], gelu, gate, up, proj)
        if traits.post_norms:
            timed("norms_residual", rms_norm, proj, norms[layer, POST_FFN_NORM], eps, proj)
        timed("norms_residual", add_inplace, x, proj)
    logits = np.empty((batch.logits_rows.shape[0], cfg.vocab_size), np.float32)
    timed("head", output_logits, x, batch.logits_rows, model.output_norm, eps, model.head.data,
          model.head.ggml_type, logits, int8)
    return times


def profile(llm, n_seqs: int, context: int, steps: int, kv_cache_dtype: str = "float32") -> dict:
    from engine.llm_engine import EngineConfig, LLMEngine
    from engine.sampling import GREEDY
    from engine.sequence import RequestOptions, Sequence
    from engine.stopping import StoppingCriteria

    model = llm.model
    budget = max(2048, context)
    engine = LLMEngine(model, llm.tokenizer, EngineConfig(kv_cache_mb=1024, max_num_seqs=n_seqs,
                                                          max_num_batched_tokens=budget,
                                                          kv_cache_dtype=kv_cache_dtype))
    rng = random.Random(n_seqs)
    # the first sequences decode while the later ones prefill (one step per `budget` prompt tokens):
    # room for those tokens too, or they finish inside the timed steps and the batch shrinks
    prefill_steps = -(-n_seqs * context // budget)
    options = RequestOptions(GREEDY, StoppingCriteria(steps + prefill_steps + 4, ignore_eos=True))
    for i in range(n_seqs):
        engine.add_request(f"p{i}", [rng.randint(100, 20000) for _ in range(context)], options)
    while any(seq.num_uncomputed_tokens > 1 for seq in engine.scheduler.sequences.values()):
        engine.step()                                       # prefill (and the first tokens): not timed
    engine.step()

    forward_s, sampling_s, batches = [], [], []
    real_forward, real_append = model.forward, Sequence.append_token

    def timed_forward(batch, kv_cache):
        start = time.perf_counter()
        out = real_forward(batch, kv_cache)
        forward_s[-1] += time.perf_counter() - start
        batches.append(batch)
        return out

    def timed_append(seq, logits):
        start = time.perf_counter()
        out = real_append(seq, logits)
        sampling_s[-1] += time.perf_counter() - start
        return out

    model.forward, Sequence.append_token = timed_forward, timed_append
    step_s = []
    try:
        for _ in range(steps):
            forward_s.append(0.0)
            sampling_s.append(0.0)
            start = time.perf_counter()
            engine.step()
            step_s.append(time.perf_counter() - start)
    finally:
        del model.forward
        Sequence.append_token = real_append
    assert all(b.num_tokens == n_seqs for b in batches), "every timed step decodes one token per sequence"

    replays = [replay(model, batches[-1], engine.kv_cache) for _ in range(max(3, steps // 2))]
    components = {c: statistics.median(r[c] for r in replays) * 1e3 for c in COMPONENTS}
    total = sum(components.values())
    step, forward, sampling = (statistics.median(v) * 1e3 for v in (step_s, forward_s, sampling_s))
    layers = model.config.num_layers
    return {
        "sequences": n_seqs, "context_tokens": context,
        "step_ms": round(step, 3), "forward_ms": round(forward, 3), "sampling_ms": round(sampling, 3),
        "python_ms": round(step - forward - sampling, 3),
        "python_share_of_step": round((step - forward - sampling) / step, 3),
        "decode_tok_s": round(n_seqs / step * 1e3, 1),
        "replay_ms": {c: round(t, 3) for c, t in components.items()},
        "replay_total_ms": round(total, 3),
        "share_of_forward": {c: round(t / total, 3) for c, t in components.items()},
        "per_layer_ms": {c: round(components[c] / layers, 4)
                         for c in ("norms_residual", "qkv", "rope_kv_write", "attention", "o_proj", "ffn")},
    }


def verify_costs(llm, rows_list: list[int], context: int, repeats: int) -> list[dict]:
    from engine.llm_engine import EngineConfig, LLMEngine
    from engine.sampling import GREEDY
    from engine.sequence import RequestOptions, Sequence
    from engine.speculation import SpeculationParams
    from engine.stopping import StoppingCriteria

    model, captured, batches = llm.model, {}, {}
    real_forward, real_propose = model.forward, Sequence.propose_drafts

    def capture(batch, kv_cache):
        captured["batch"] = (batch, kv_cache)
        return real_forward(batch, kv_cache)

    model.forward = capture
    try:
        for rows in rows_list:
            engine = LLMEngine(model, llm.tokenizer, EngineConfig(kv_cache_mb=256, weigh_drafts=False))
            options = RequestOptions(GREEDY, StoppingCriteria(8, ignore_eos=True),
                                     speculation=SpeculationParams(num_draft_tokens=16))
            engine.add_request("v", [random.Random(1).randint(100, 20000) for _ in range(context)], options)
            Sequence.propose_drafts = real_propose
            while any(seq.num_uncomputed_tokens > 1 for seq in engine.scheduler.sequences.values()):
                engine.step()

            def forced(seq, n=rows - 1):                   # rows - 1 drafts: the last token repeated
                seq.draft_ids = [seq.token_ids[-1]] * n
            Sequence.propose_drafts = forced
            engine.step()
            batches[rows] = captured["batch"]
    finally:
        del model.forward
        Sequence.propose_drafts = real_propose
    best = {rows: float("inf") for rows in rows_list}
    for _ in range(repeats):
        for rows in rows_list:
            best[rows] = min(best[rows], sum(replay(model, *batches[rows]).values()))
    one = best.get(1)
    return [{"rows": rows, "step_ms": round(best[rows] * 1e3, 2),
             "ratio": round(best[rows] / one, 2) if one else None} for rows in rows_list]


def main() -> None:
    from engine.block_store import KV_DTYPES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a name from `meshllm models list` (default: the default model)")
    ap.add_argument("--seqs", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--context", type=int, default=256, help="prompt tokens of each sequence")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fast", action="store_true", help="int8 activations in decode")
    ap.add_argument("--kv-cache-dtype", default="float32", choices=tuple(KV_DTYPES))
    ap.add_argument("--verify-rows", type=int, nargs="+", default=None,
                    help="measure speculative verify steps of these row counts instead (include 1)")
    args = ap.parse_args()
    from engine.runtime import configure
    configure(args.threads)
    from bench_engine import cpu_name

    from engine.llm import LLM
    llm = LLM.load(args.model, int8_activations=args.fast)
    if llm.model.config.is_moe:
        raise SystemExit("bench_profile replays dense decoders; bench_moe.py measures the MoE layer")
    llm.warm_up()
    if args.verify_rows:
        print(json.dumps({"bench": "verify_rows", "cpu": cpu_name(), "threads": args.threads,
                          "model": args.model or "default", "mode": "fast" if args.fast else "exact",
                          "context_tokens": args.context,
                          "results": verify_costs(llm, args.verify_rows, args.context, args.steps)}, indent=1))
        return
    print(json.dumps({"bench": "profile", "cpu": cpu_name(), "threads": args.threads,
                      "model": args.model or "default", "mode": "fast" if args.fast else "exact",
                      "kv_cache_dtype": args.kv_cache_dtype,
                      "results": [profile(llm, n, args.context, args.steps, args.kv_cache_dtype)
                                  for n in args.seqs]}, indent=1))


if __name__ == "__main__":
    main()
