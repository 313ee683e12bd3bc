"""Parity figures behind tests/test_model_parity_architectures.py, as JSON: for each installed
model, the top-20 logit distance to transformers (max, mean over the 8 prompts) of the exact and
fast modes and of llama.cpp, top-1 changes, and greedy sequences equal to transformers'.

    python bench/parity_report.py [NAME ...] [--no-greedy]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_model_parity import last_logits, prompts, top20_error  # noqa: E402

from engine.generation import Generator, RequestOptions  # noqa: E402
from engine.llm import LLM  # noqa: E402
from engine.model_registry import installed_path  # noqa: E402
from engine.sampling import GREEDY  # noqa: E402
from engine.stopping import StoppingCriteria  # noqa: E402

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"


def report(name: str, greedy: bool) -> dict:
    hf = json.loads((GOLDEN / name / "hf_reference.json").read_text())
    cpp = json.loads((GOLDEN / name / "llamacpp_reference.json").read_text())
    out = {"model": name, "prompts": len(prompts(hf))}
    peer_err, peer_top1 = [], 0
    for case, peer in zip(prompts(hf), prompts(cpp), strict=True):
        peer_logits = dict((int(i), v) for i, v in peer["last_logits_top20"])
        peer_err.append(max(abs(peer_logits[int(i)] - v) for i, v in case["last_logits_top20"]
                            if int(i) in peer_logits))
        peer_top1 += peer["last_logits_top20"][0][0] != case["last_logits_top20"][0][0]
    out["llama.cpp"] = {"top20_max": round(max(peer_err), 4), "top20_mean": round(float(np.mean(peer_err)), 4),
                        "top1_changed": peer_top1,
                        "greedy_equal": sum(p["greedy_48"] == c["greedy_48"]
                                            for c, p in zip(prompts(hf), prompts(cpp)))}
    for mode, fast in (("exact", False), ("fast", True)):
        llm = LLM.load(installed_path(name), int8_activations=fast)
        errs, top1 = [], 0
        for case in prompts(hf):
            logits = last_logits(llm.model, case["prompt_ids"], num_blocks=(len(case["prompt_ids"]) + 31) // 16)
            errs.append(top20_error(logits, case))
            top1 += int(np.argmax(logits)) != case["last_logits_top20"][0][0]
        row = {"top20_max": round(max(errs), 4), "top20_mean": round(float(np.mean(errs)), 4), "top1_changed": top1}
        if greedy:
            gen = Generator(llm.model, llm.tokenizer, max_context=2048)
            options = RequestOptions(GREEDY, StoppingCriteria(max_new_tokens=48))
            row["greedy_equal"] = sum([e.token_id for e in gen.generate(c["prompt_ids"], options)] == c["greedy_48"]
                                      for c in prompts(hf))
        out[mode] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct",
                                                  "gemma-3-270m"])
    ap.add_argument("--no-greedy", action="store_true")
    args = ap.parse_args()
    names = [m for m in args.models if (GOLDEN / m / "hf_reference.json").exists() and installed_path(m)]
    print(json.dumps([report(m, not args.no_greedy) for m in names], indent=1))


if __name__ == "__main__":
    main()
