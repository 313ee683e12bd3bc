"""Decoder hyper-parameters, read from GGUF metadata, for every architecture in architectures.py."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .architectures import ARCHITECTURES, Architecture
from .gguf_file import GGUFError, GGUFFile

SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    name: str
    vocab_size: int
    hidden_size: int           # d_model
    intermediate_size: int     # FFN width
    num_layers: int
    num_heads: int             # query heads
    num_kv_heads: int          # key/value heads (grouped-query attention)
    head_dim: int
    rope_dim: int              # leading dimensions of each head that RoPE rotates
    rope_theta: float
    rope_scale: float          # linear position scaling (1.0 = none)
    rms_norm_eps: float
    context_length: int        # longest sequence the model was trained for
    tied_embeddings: bool      # output head reuses token_embd
    attention_scale: float = 0.0   # multiplies q.k; 0 means 1/sqrt(head_dim)
    sliding_window: int = 0        # keys a local layer sees (0: no local layers)
    local_rope_theta: float = 0.0  # RoPE base of local layers
    # Mixture of Experts (0 experts: a dense model). Every layer is an MoE layer when set.
    num_experts: int = 0                      # routed experts per layer (E)
    num_experts_used: int = 0                 # experts each token goes through (top-k)
    expert_intermediate_size: int = 0         # FFN width of one routed expert
    shared_expert_intermediate_size: int = 0  # FFN width of the shared expert (0: none)
    expert_weights_norm: bool = False         # renormalise the k routing weights to sum to 1
    expert_weights_scale: float = 1.0         # multiplies the routing weights

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def queries_per_kv_head(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def traits(self) -> Architecture:
        return ARCHITECTURES[self.architecture]

    def is_local_layer(self, layer: int) -> bool:
        """Whether a layer attends through the sliding window (Gemma 3: five local, one global)."""
        n = self.traits.sliding_window_pattern
        return self.sliding_window > 0 and n > 0 and layer % n < n - 1

    @property
    def layer_windows(self) -> tuple[int, ...]:
        """Sliding window of each layer; 0 for a global layer."""
        return tuple(self.sliding_window if self.is_local_layer(i) else 0 for i in range(self.num_layers))

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> ModelConfig:
        md = gguf.metadata
        arch = md.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise GGUFError(f"{gguf.path!r}: architecture {arch!r} is not supported "
                            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")

        def get(key, default=None):
            v = md.get(f"{arch}.{key}", default)
            if v is None:
                raise GGUFError(f"{gguf.path!r}: metadata {arch}.{key} is missing")
            return v

        hidden = int(get("embedding_length"))
        heads = int(get("attention.head_count"))
        kv_heads = int(get("attention.head_count_kv", heads))
        head_dim = int(get("attention.key_length", hidden // heads))
        embd = gguf.tensor_infos.get("token_embd.weight")
        if embd is None:
            raise GGUFError(f"{gguf.path!r} has no token_embd.weight")
        vocab = int(md.get(f"{arch}.vocab_size", embd.shape[1]))
        traits = ARCHITECTURES[arch]
        window = int(md.get(f"{arch}.attention.sliding_window", 0) or 0) if traits.sliding_window_pattern else 0
        layers = int(get("block_count"))
        # Gemma 3 scales q by query_pre_attn_scalar^-0.5: head_dim for the released sizes except
        # 27B (62 layers), which uses hidden/heads; llama.cpp applies the same rule.
        scale = 1.0 / math.sqrt(head_dim)
        if arch == "gemma3" and layers == 62:
            scale = 1.0 / math.sqrt(hidden / heads)
        scaling = md.get(f"{arch}.rope.scaling.type", "none")
        rope_scale = float(md.get(f"{arch}.rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
        moe = _moe_fields(md, arch, traits, int(get("feed_forward_length")), gguf)
        config = cls(
            architecture=arch,
            name=str(md.get("general.name", "")),
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=int(get("feed_forward_length")),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rope_dim=int(get("rope.dimension_count", head_dim)),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            rope_scale=rope_scale,
            rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
            context_length=int(get("context_length", 2048)),
            tied_embeddings=not gguf.has_tensor("output.weight"),
            attention_scale=scale,
            sliding_window=window,
            local_rope_theta=float(md.get(f"{arch}.rope.freq_base_swa", traits.default_local_rope_base or 0.0)),
            **moe,
        )
        config.validate()
        return config

    def validate(self) -> None:
        if self.sliding_window < 0:
            raise GGUFError(f"sliding window {self.sliding_window} must not be negative")
        if self.num_heads % self.num_kv_heads:
            raise GGUFError(f"{self.num_heads} query heads do not group over {self.num_kv_heads} KV heads")
        if self.head_dim % 16 or self.rope_dim % 2 or self.rope_dim > self.head_dim:
            raise GGUFError(f"head_dim {self.head_dim} / rope_dim {self.rope_dim} not supported "
                            "(head_dim must be a multiple of 16)")
        if self.hidden_size % 16 or self.intermediate_size % 16:
            raise GGUFError("hidden and FFN sizes must be multiples of 16")
        if self.traits.requires_experts and not self.is_moe:
            raise GGUFError(f"architecture {self.architecture!r} needs {self.architecture}.expert_count > 0")
        if self.is_moe:
            if not 1 <= self.num_experts_used <= self.num_experts:
                raise GGUFError(f"expert_used_count {self.num_experts_used} must be in 1..{self.num_experts}")
            if self.expert_intermediate_size % 16 or self.shared_expert_intermediate_size % 16 \
                    or self.expert_intermediate_size == 0:
                raise GGUFError("expert FFN widths must be positive multiples of 16")


_GATING_SOFTMAX = 1    # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX; 2 is sigmoid (DeepSeek V3)


def _moe_fields(md: dict, arch: str, traits: Architecture, ffn: int, gguf: GGUFFile) -> dict:
    """The Mixture-of-Experts fields of ModelConfig, read as llama.cpp reads them (src/models/llama.cpp,
    qwen2moe.cpp): Mixtral's experts are feed_forward_length wide; Qwen2-MoE's are
    expert_feed_forward_length wide (else feed_forward_length / expert_used_count) and its shared
    expert expert_shared_feed_forward_length (else feed_forward_length)."""
    experts = int(md.get(f"{arch}.expert_count", 0) or 0)
    if not experts:
        return {}
    used = int(md.get(f"{arch}.expert_used_count", 0) or 0)
    gating = int(md.get(f"{arch}.expert_gating_func", _GATING_SOFTMAX) or _GATING_SOFTMAX)
    if gating != _GATING_SOFTMAX:
        raise GGUFError(f"{gguf.path!r}: expert gating function {gating} is not supported (softmax only)")
    expert_ffn = int(md.get(f"{arch}.expert_feed_forward_length", 0) or 0)
    if not expert_ffn:
        expert_ffn = ffn // max(used, 1) if traits.shared_expert else ffn
    shared = 0
    if traits.shared_expert:
        shared = int(md.get(f"{arch}.expert_shared_feed_forward_length", 0) or 0) or ffn
    scale = float(md.get(f"{arch}.expert_weights_scale", 0.0) or 0.0)
    return {"num_experts": experts, "num_experts_used": used, "expert_intermediate_size": expert_ffn,
            "shared_expert_intermediate_size": shared,
            "expert_weights_norm": bool(md.get(f"{arch}.expert_weights_norm", traits.expert_weights_norm)),
            "expert_weights_scale": scale or 1.0}
