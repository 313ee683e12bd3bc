"""Llama-family hyper-parameters, read from GGUF metadata."""
from __future__ import annotations

from dataclasses import dataclass

from .gguf_file import GGUFError, GGUFFile

SUPPORTED_ARCHITECTURES = ("llama", "mistral")


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

    @property
    def queries_per_kv_head(self) -> int:
        return self.num_heads // self.num_kv_heads

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
        scaling = md.get(f"{arch}.rope.scaling.type", "none")
        rope_scale = float(md.get(f"{arch}.rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
        config = cls(
            architecture=arch,
            name=str(md.get("general.name", "")),
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=int(get("feed_forward_length")),
            num_layers=int(get("block_count")),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rope_dim=int(get("rope.dimension_count", head_dim)),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            rope_scale=rope_scale,
            rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
            context_length=int(get("context_length", 2048)),
            tied_embeddings=not gguf.has_tensor("output.weight"),
        )
        config.validate()
        return config

    def validate(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise GGUFError(f"{self.num_heads} query heads do not group over {self.num_kv_heads} KV heads")
        if self.head_dim % 16 or self.rope_dim % 2 or self.rope_dim > self.head_dim:
            raise GGUFError(f"head_dim {self.head_dim} / rope_dim {self.rope_dim} not supported "
                            "(head_dim must be a multiple of 16)")
        if self.hidden_size % 16 or self.intermediate_size % 16:
            raise GGUFError("hidden and FFN sizes must be multiples of 16")
