"""Does llama.cpp read tests/moe_factory.py's GGUF files as we do? Writes tests/golden/moe/llama_cpp.json
(tests/test_moe.py compares our fast mode with it) and prints its summary.

    PYTHONPATH=tests .venv-peers/bin/python tests/golden_tools/compare_moe_llamacpp.py

For each tiny MoE model and weight type: llama.cpp (llama-cpp-python, CPU, logits of every
position) on the fixtures' prompt + greedy ids, against transformers' fp32 logits
(tests/golden/moe): the largest logit distance over all positions and the share of positions
whose top-1 token agrees. llama.cpp quantizes activations to 8 bits in its quantized matmuls, so
on Q8_0 / Q4_K it sits further from fp32 than our exact mode (as on the real models,
tests/golden/README.md); on F32 it should agree closely.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import moe_factory as mf
import numpy as np

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "moe"


def main() -> None:
    import llama_cpp
    hf = json.loads((GOLDEN / "hf_reference.json").read_text())
    report = {"llama_cpp": llama_cpp.__version__, "models": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name, spec in mf.SPECS.items():
            for quant in mf.QUANTS:
                path = mf.write_moe_gguf(Path(folder) / f"{name}_{quant}.gguf", spec, quant, merges=("! !",))
                llm = llama_cpp.Llama(model_path=str(path), n_ctx=mf.CONTEXT, n_batch=mf.CONTEXT, logits_all=True,
                                      n_threads=2, verbose=False)
                reference = np.load(GOLDEN / f"{name}_{quant}_logits.npz")
                distance, agree, total, per_position = 0.0, 0, 0, []
                for i, case in enumerate(hf["models"][f"{name}_{quant}"]):
                    ids = case["prompt_ids"] + case["greedy"][:-1]
                    llm.reset()
                    llm.eval(ids)
                    got = np.array(llm.scores[:len(ids)], np.float32)
                    want = reference[f"prompt{i}"]
                    distance = max(distance, float(np.abs(got - want).max()))
                    per_position += np.abs(got - want).max(axis=1).round(5).tolist()
                    agree += int((got.argmax(axis=1) == want.argmax(axis=1)).sum())
                    total += len(ids)
                report["models"][f"{name}_{quant}"] = {"max_abs_logit_diff": round(distance, 5),
                                                       "median_position_diff": round(float(np.median(per_position)), 5),
                                                       "top1_agreement": f"{agree}/{total}",
                                                       "position_max_abs_diff": per_position}
                del llm
    (GOLDEN / "llama_cpp.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({name: {k: v for k, v in r.items() if k != "position_max_abs_diff"}
                      for name, r in report["models"].items()}, indent=1))


if __name__ == "__main__":
    main()
