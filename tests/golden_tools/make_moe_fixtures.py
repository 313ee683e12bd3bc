"""Write the MoE parity fixtures: tests/golden/moe/{hf_reference.json, <model>_<quant>_logits.npz}.

Run with the peer environment (torch, transformers, gguf; no engine needed):
    PYTHONPATH=tests .venv-peers/bin/python tests/golden_tools/make_moe_fixtures.py

For each tiny random model of tests/moe_factory.py (Mixtral, Qwen2-MoE) and each weight type (F32,
Q8_0, Q4_K), transformers (fp32, eager attention) runs on the weights dequantized from that type:
the greedy continuation of each of the 4 prompts, then the logits at every position of prompt +
continuation. The tests write the same GGUF files at run time and read only these files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import moe_factory as mf
import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "golden" / "moe"


def hf_model(spec: mf.MoESpec, quant: str):
    from transformers import MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM
    common = dict(vocab_size=mf.VOCAB, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                  num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                  max_position_embeddings=mf.CONTEXT, rms_norm_eps=mf.RMS_EPS, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "default", "rope_theta": mf.ROPE_BASE},
                  num_experts_per_tok=spec.experts_used)
    if spec.architecture == "llama":
        config = MixtralConfig(intermediate_size=spec.expert_ffn, num_local_experts=spec.experts,
                               head_dim=spec.head_dim, sliding_window=None, **common)
        model_class = MixtralForCausalLM
    else:
        config = Qwen2MoeConfig(intermediate_size=spec.dense_ffn, moe_intermediate_size=spec.expert_ffn,
                                shared_expert_intermediate_size=spec.shared_ffn, num_experts=spec.experts,
                                norm_topk_prob=spec.norm_topk_prob, qkv_bias=True, decoder_sparse_step=1,
                                mlp_only_layers=[], use_sliding_window=False, **common)
        model_class = Qwen2MoeForCausalLM
    config._attn_implementation = "eager"
    model = model_class(config).to(torch.float32).eval()
    weights = mf.hf_weights(spec, quant)
    state = {}
    for name, value in weights.items():
        if name.endswith("mlp.experts.gate"):
            prefix = name[: -len("gate")]
            state[prefix + "gate_up_proj"] = np.concatenate([value, weights[prefix + "up"]], axis=1)  # (E, 2F, D)
        elif name.endswith("mlp.experts.down"):
            state[name[: -len("down")] + "down_proj"] = value                                          # (E, D, F)
        elif not name.endswith("mlp.experts.up"):
            state[name] = value
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=True)
    return model


@torch.no_grad()
def run(model, ids: list[int]) -> tuple[list[int], np.ndarray]:
    seq = list(ids)
    for _ in range(mf.GREEDY_TOKENS):
        seq.append(int(torch.argmax(model(torch.tensor([seq])).logits[0, -1])))
    logits = model(torch.tensor([seq[:-1]])).logits[0].numpy().astype(np.float32)
    return seq[len(ids):], logits


def main() -> None:
    import transformers
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    reference = {"source": f"transformers {transformers.__version__}, torch {torch.__version__}, fp32, eager "
                 "attention, weights dequantized by gguf-py from each type (tests/moe_factory.py)",
                 "greedy_tokens": mf.GREEDY_TOKENS, "models": {}}
    for name, spec in mf.SPECS.items():
        for quant in mf.QUANTS:
            model = hf_model(spec, quant)
            cases, arrays = [], {}
            for i, text in enumerate(mf.PROMPTS):
                ids = mf.prompt_ids(text)
                greedy, logits = run(model, ids)
                cases.append({"prompt_text": text, "prompt_ids": ids, "greedy": greedy})
                arrays[f"prompt{i}"] = logits          # (len(ids) + greedy - 1, vocab): every position
            reference["models"][f"{name}_{quant}"] = cases
            np.savez_compressed(OUT / f"{name}_{quant}_logits.npz", **arrays)
            print(f"{name} {quant}: {[c['greedy'][:6] for c in cases]}", file=sys.stderr)
    (OUT / "hf_reference.json").write_text(json.dumps(reference, indent=1))


if __name__ == "__main__":
    main()
