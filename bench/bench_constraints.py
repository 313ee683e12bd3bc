"""What structured output costs per generated token: the llguidance mask (engine/constraints.py)
at batch 1 and 16. Prints JSON.

    python bench/bench_constraints.py [--model qwen2.5-coder-0.5b-instruct] [--tokens 64] [--threads 2]

Each batch size decodes the same prompts twice, plain and held to a JSON schema (an array of at
least 100 strings, so that neither run can finish early: both emit exactly --tokens tokens per
sequence, greedy, end-of-turn ignored), interleaving the two runs step by step so that they share
the machine's state alike. Reported: decode tok/s of each, the step-time difference per token,
and the mask's own cost (compute the bitmask, apply it to the logits) and the parser's advance per token, timed
by replaying the constrained run's tokens through a fresh parser.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from bench_engine import cpu_name  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.constraints import OutputConstraint  # noqa: E402
from engine.llm import LLM  # noqa: E402
from engine.llm_engine import EngineConfig, LLMEngine  # noqa: E402
from engine.runtime import configure  # noqa: E402
from engine.sampling import GREEDY  # noqa: E402
from engine.sequence import RequestOptions  # noqa: E402
from engine.stopping import StoppingCriteria  # noqa: E402

SCHEMA = {"type": "array", "items": {"type": "string"}, "minItems": 100}
PROMPTS = ["List fruits as a JSON array of strings.", "List countries of Europe as JSON.",
           "Name animals of the sea, as a JSON list.", "Give programming languages as a JSON array."]


def run_pair(llm: LLM, batch: int, tokens: int) -> dict:
    """Plain and constrained engines stepped in turn; decode-step times of each."""
    constraint = OutputConstraint("json_schema", json.dumps(SCHEMA))
    engines, times, outputs = {}, {}, {}
    for name, c in (("plain", None), ("constrained", constraint)):
        engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=40 * batch, max_num_seqs=batch))
        options = RequestOptions(GREEDY, StoppingCriteria(tokens, ignore_eos=True), constraint=c)
        for i in range(batch):
            engine.add_request(f"r{i}", llm.encode_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]),
                               options)
        engines[name], times[name], outputs[name] = engine, [], {f"r{i}": [] for i in range(batch)}
    first = True
    while any(e.has_work() for e in engines.values()):
        for name, engine in engines.items():
            if not engine.has_work():
                continue
            start = time.perf_counter()
            out = engine.step()
            elapsed = time.perf_counter() - start
            if not first:                              # the prefill step is not a decode step
                times[name].append(elapsed)
            for o in out:
                outputs[name][o.request_id] += [e.token_id for e in o.events]
        first = False
    assert all(len(ids) == tokens for run in outputs.values() for ids in run.values())
    plain, constrained = statistics.median(times["plain"]), statistics.median(times["constrained"])
    return {"batch": batch, "decode_tok_s_plain": round(batch / plain, 1),
            "decode_tok_s_constrained": round(batch / constrained, 1),
            "step_ms_plain": round(plain * 1e3, 2), "step_ms_constrained": round(constrained * 1e3, 2),
            "overhead_us_per_token": round((constrained - plain) / batch * 1e6, 1),
            "constrained_text_sample": llm.tokenizer.decode(outputs["constrained"]["r0"])[:80],
            "_tokens": outputs["constrained"]["r0"]}


def mask_cost(llm: LLM, tokens: list[int]) -> dict:
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=8))
    decoder = engine.grammars.decoder(OutputConstraint("json_schema", json.dumps(SCHEMA)))
    logits = np.zeros(llm.config.vocab_size, np.float32)
    decoder.masked(logits)                      # compiles the kernel (cached afterwards)
    masks, accepts = [], []
    for token in tokens:
        t0 = time.perf_counter()
        decoder.masked(logits)
        t1 = time.perf_counter()
        decoder.accept(token)
        masks.append(t1 - t0)
        accepts.append(time.perf_counter() - t1)
    return {"mask_us_median": round(statistics.median(masks) * 1e6, 1),
            "mask_us_p99": round(float(np.percentile(masks, 99)) * 1e6, 1),
            "accept_us_median": round(statistics.median(accepts) * 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    configure(args.threads)
    llm = LLM.load(args.model)
    llm.warm_up()
    t0 = time.perf_counter()
    LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=8)).grammars.warm()
    tokenizer_s = time.perf_counter() - t0
    rows = [run_pair(llm, batch, args.tokens) for batch in (1, 16)]
    report = {"cpu": cpu_name(), "threads": args.threads, "model": args.model, "vocab": llm.config.vocab_size,
              "tokens_per_sequence": args.tokens, "llguidance_tokenizer_build_s": round(tokenizer_s, 2),
              "mask": mask_cost(llm, rows[0]["_tokens"]),
              "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
