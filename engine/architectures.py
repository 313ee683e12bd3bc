"""How each supported GGUF architecture differs from Llama, as data.

One forward (kernels/cpu/llama.py) runs every architecture; what differs is a handful of
switches and per-layer numbers, the way llama.cpp's `src/models/*.cpp` compose shared blocks.
Anchors: llama.cpp `src/models/{llama,qwen2,gemma3}.cpp`, transformers `modeling_qwen2.py`,
`modeling_gemma3.py`.

    llama / mistral   the base: RMSNorm, RoPE (GGML "normal" mode: the converter permuted Wq/Wk),
                      SiLU-gated FFN, attention scale 1/sqrt(head_dim)
    qwen2             + biases on Q, K and V; RoPE in NEOX mode (halves, not pairs: not permuted)
    gemma3            + embeddings scaled by sqrt(hidden); RMSNorm over each head of Q and K;
                      a norm after attention and after the FFN (before each residual add);
                      GELU(tanh)-gated FFN; NEOX RoPE; five local layers (sliding window, their
                      own RoPE base) then one global layer, repeating; attention scale
                      1/sqrt(query_pre_attn_scalar) = 1/sqrt(head_dim) for the released sizes.
                      Gemma's RMSNorm multiplies by (1 + w); llama.cpp's converter stores 1 + w,
                      so the file's weights are used as they are (the parity tests check it).
    llama + experts   Mixtral: a file with `llama.expert_count` replaces each FFN by a router
                      (ffn_gate_inp) and E experts stacked in ffn_{gate,up,down}_exps; softmax over
                      the E router logits, the top k, their weights renormalised to sum to 1
    qwen2moe          qwen2 + experts (width expert_feed_forward_length) + a shared expert
                      (ffn_*_shexp) that every token goes through, scaled by
                      sigmoid(h . ffn_gate_inp_shexp); the top-k weights are not renormalised:
                      transformers' norm_topk_prob defaults to False (Qwen1.5-MoE ships False) and
                      llama.cpp hard-codes the same for qwen2moe. A file's `<arch>.expert_weights_norm`
                      overrides either default (kernels/cpu/moe.py).
"""
from __future__ import annotations

from dataclasses import dataclass

ROPE_NORMAL, ROPE_NEOX = 0, 1          # pairs (2i, 2i+1) / pairs (i, i + rope_dim/2)
FFN_SILU, FFN_GELU_TANH = 0, 1


@dataclass(frozen=True)
class Architecture:
    name: str
    rope_mode: int = ROPE_NORMAL
    ffn_activation: int = FFN_SILU
    qkv_bias: bool = False               # blk.N.attn_{q,k,v}.bias
    qk_norm: bool = False                # blk.N.attn_{q,k}_norm: RMSNorm over each head
    post_norms: bool = False             # blk.N.post_attention_norm, blk.N.post_ffw_norm
    scale_embeddings: bool = False       # x = embed * sqrt(hidden)
    sliding_window_pattern: int = 0      # n: layers i with i % n < n - 1 are local; 0: all global
    default_local_rope_base: float = 0.0  # RoPE base of local layers when the file does not say
    requires_experts: bool = False       # an MoE architecture: expert_count must be set
    shared_expert: bool = False          # blk.N.ffn_{gate,up,down}_shexp, gated by ffn_gate_inp_shexp
    expert_weights_norm: bool = True     # renormalise the top-k routing weights (file may override)


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("llama"),
    Architecture("mistral"),
    Architecture("qwen2", rope_mode=ROPE_NEOX, qkv_bias=True),
    Architecture("gemma3", rope_mode=ROPE_NEOX, ffn_activation=FFN_GELU_TANH, qk_norm=True, post_norms=True,
                 scale_embeddings=True, sliding_window_pattern=6, default_local_rope_base=10000.0),
    Architecture("qwen2moe", rope_mode=ROPE_NEOX, qkv_bias=True, requires_experts=True, shared_expert=True,
                 expert_weights_norm=False),
)}
