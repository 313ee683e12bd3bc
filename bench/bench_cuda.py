"""GPU benchmark of the CUDA backend on SmolLM2-135M (Q4_1). Prints JSON.

    python bench/bench_cuda.py [--model PATH] [--repeats 3] [--tokens 64] [--peers]

- prefill512_tok_s: a 512-token prompt (bench_engine's peer prompt: random ids, seed 0) in one forward.
- decode128_tok_s: one sequence, 128 greedy tokens after a 16-token prompt, one step per token,
  sampled on the device (token ids in, ids and logprobs out).
- decode_tok_s_{16,64,256}_seqs: aggregate decode through LLMEngine (continuous batching), that many
  16-token prompts admitted together, --tokens greedy tokens each; the prefill step is not timed.
- decode_step_ms_*: per single-sequence decode step, wall time and GPU time between two CUDA events
  recorded around the step. With numba the GPU mostly waits on Python launching ~15 kernels per
  layer, so the event time includes those gaps; the difference to wall time is host work after the
  last kernel (copying the sampled id out, bookkeeping).
- --peers: transformers (torch on CUDA, the GGUF dequantized to float16) on the same prompts, and
  our ratio to it. Needs torch with CUDA and transformers installed; otherwise reported as an error.

Without a usable CUDA GPU it prints {"error": "no CUDA GPU ..."} and exits 0 (so a sweep over
machines carries on); any other failure exits non-zero. Not yet run on GPU hardware: see docs/gpu.md.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peer_prompt(n: int, vocab: int = 49152) -> list[int]:
    random.seed(0)
    return [random.randint(100, 40000) % vocab for _ in range(n)]


def single_sequence(model, repeats: int, prompt_tokens: int = 512, decode_tokens: int = 128) -> dict:
    from numba import cuda

    from engine.model import ForwardBatch

    P, N = prompt_tokens, decode_tokens
    prompt = peer_prompt(P, model.config.vocab_size)
    kv = model.new_kv_cache(num_blocks=(P + N + 32) // 16 + 1, block_size=16)
    table = np.arange(kv.num_blocks, dtype=np.int32).reshape(1, -1)
    greedy = (np.zeros(1, np.float32), np.zeros(1, np.int32), np.zeros(1))

    def batch(ids, start):
        n = len(ids)
        pos = np.arange(start, start + n, dtype=np.int32)
        return ForwardBatch(np.array(ids, np.int32), pos, np.zeros(n, np.int32), table, pos.copy(),
                            np.array([n - 1], np.int32))

    prefill, decode, step_wall, step_gpu = [], [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.forward(batch(prompt, 0), kv)                 # the host copy of the logits synchronises
        prefill.append(P / (time.perf_counter() - t0))
        token = int(model.sample(batch(prompt[:16], 0), kv, *greedy)[0][0])
        t0 = time.perf_counter()
        for i in range(N):
            token = int(model.sample(batch([token], 16 + i), kv, *greedy)[0][0])
        decode.append(N / (time.perf_counter() - t0))
        for i in range(16):
            start, end = cuda.event(), cuda.event()
            t0 = time.perf_counter()
            start.record()
            ids, _ = model.sample(batch([token], 16 + N + i), kv, *greedy)
            end.record()
            end.synchronize()
            step_wall.append((time.perf_counter() - t0) * 1e3)
            step_gpu.append(start.elapsed_time(end))
            token = int(ids[0])
    return {f"prefill{P}_tok_s": round(float(np.median(prefill)), 1),
            f"decode{N}_tok_s": round(float(np.median(decode)), 1),
            "decode_step_ms_wall": round(float(np.median(step_wall)), 3),
            "decode_step_ms_cuda_events": round(float(np.median(step_gpu)), 3)}


def aggregate_decode(llm, n_seqs: int, tokens: int, kv_cache_mb: int = 4096) -> float:
    from engine.llm_engine import EngineConfig, LLMEngine
    from engine.sampling import GREEDY
    from engine.sequence import RequestOptions
    from engine.stopping import StoppingCriteria

    engine = LLMEngine(llm.model, llm.tokenizer,
                       EngineConfig(kv_cache_mb=kv_cache_mb, max_num_seqs=n_seqs,
                                    max_num_batched_tokens=max(512, 16 * n_seqs)))
    rng = random.Random(n_seqs)
    vocab = llm.config.vocab_size
    options = RequestOptions(GREEDY, StoppingCriteria(tokens, ignore_eos=True))
    for i in range(n_seqs):
        engine.add_request(f"r{i}", [rng.randint(100, 40000) % vocab for _ in range(16)], options)
    engine.step()                                           # the prefill step: not timed
    generated = 0
    t0 = time.perf_counter()
    while engine.has_work():
        generated += sum(len(o.events) for o in engine.step())
    return generated / (time.perf_counter() - t0)


def transformers_peer(gguf_path: Path, batch_sizes, tokens: int) -> dict:
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        return {"error": f"transformers peer unavailable: {e}"}
    if not torch.cuda.is_available():
        return {"error": "torch has no CUDA device"}
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                 dtype=torch.float16).to("cuda").eval()
    prompt = torch.tensor([peer_prompt(512)], device="cuda")
    result = {"engine": "transformers", "dtype": "float16", "torch": torch.__version__}
    with torch.no_grad():
        model(prompt)                                       # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(prompt)
        torch.cuda.synchronize()
        result["prefill512_tok_s"] = round(512 / (time.perf_counter() - t0), 1)
        out = model(prompt[:, :16], use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(128):
            out = model(tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        result["decode128_tok_s"] = round(128 / (time.perf_counter() - t0), 1)
        for n in batch_sizes:
            ids = torch.randint(100, 40000, (n, 16), device="cuda")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            torch.cuda.synchronize()
            result[f"decode_tok_s_{n}_seqs"] = round(n * tokens / (time.perf_counter() - t0), 1)  # prefill included
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="a model name from `meshllm models list` or a GGUF path (default: smollm2-135m-instruct)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=512, help="prefill length (tiny values: simulator smoke runs)")
    ap.add_argument("--decode-tokens", type=int, default=128, help="single-sequence decode steps")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per sequence in the aggregate runs")
    ap.add_argument("--kv-cache-mb", type=int, default=4096, help="device KV pool of the aggregate runs")
    ap.add_argument("--batches", default="16,64,256", help="sequence counts of the aggregate runs")
    ap.add_argument("--peers", action="store_true", help="also run transformers on the same GPU")
    args = ap.parse_args()

    from engine.device import cuda_available
    if not cuda_available():
        print(json.dumps({"engine": "meshllm-cuda", "error": "no CUDA GPU: numba.cuda finds no usable device"}))
        return 0
    from numba import cuda

    from engine.llm import LLM
    from engine.model_registry import SMOLLM2, resolve_model
    gguf = resolve_model(args.model or SMOLLM2)
    t0 = time.perf_counter()
    llm = LLM.load(gguf, device="cuda")
    llm.warm_up()                                            # compiles every kernel a step can reach
    try:
        name = cuda.get_current_device().name
    except AttributeError:                                   # numba's CUDA simulator (smoke runs)
        name = "CUDA simulator"
    result = {"engine": "meshllm-cuda", "gpu": name.decode() if isinstance(name, bytes) else str(name),
              "load_and_compile_s": round(time.perf_counter() - t0, 1)}
    result.update(single_sequence(llm.model, args.repeats, args.prompt_tokens, args.decode_tokens))
    batches = [int(n) for n in args.batches.split(",") if n]
    for n in batches:
        result[f"decode_tok_s_{n}_seqs"] = round(aggregate_decode(llm, n, args.tokens, args.kv_cache_mb), 1)
    if args.peers:
        peer = transformers_peer(gguf, batches, args.tokens)
        result["peers"] = {"transformers": peer}
        for key in ("prefill512_tok_s", "decode128_tok_s", *(f"decode_tok_s_{n}_seqs" for n in batches)):
            # the peer runs 512 / 128 tokens: ratios exist for the default lengths
            if key in peer:
                result[f"{key}_ratio_vs_transformers"] = round(result[key] / peer[key], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
