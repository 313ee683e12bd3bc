"""A decoder-only Transformer over GGUF weights (Llama, Mistral, Qwen2, Gemma 3, and the Mixture-of-
Experts Mixtral and Qwen2-MoE): one forward for a batch described by arrays. How the architectures
differ is data (architectures.py).

The batch mixes sequences and phases freely: each token row says which sequence it belongs to,
its position, and the KV-cache slot its key and value go to. A prefill chunk is several rows of
one sequence; a decode step is one row per sequence. Only the rows named in `logits_rows` pay for
the output head.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from numba.typed import List

from .architectures import FFN_GELU_TANH, ROPE_NEOX
from .block_store import kv_storage
from .gguf_file import GGUFError, GGUFFile
from .kernels.cpu.llama import (
    ATTN_NORM,
    FFN_NORM,
    MATRICES_PER_LAYER,
    MOE_MATRICES_PER_LAYER,
    NORMS_PER_LAYER,
    POST_ATTN_NORM,
    POST_FFN_NORM,
    decoder_stack,
    output_logits,
)
from .kernels.cpu.ops import embed, rope_tables
from .kernels.ggml_types import SUPPORTED_TYPES
from .model_config import ModelConfig
from .quants import quant_type

_LAYER_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# an MoE layer: the experts stacked in the FFN slots, then its extra matrices (kernels.cpu.llama)
_MOE_LAYER_MATRICES = _LAYER_MATRICES[:4] + ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
_MOE_EXTRA_MATRICES = ("ffn_gate_inp", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp", "ffn_gate_inp_shexp")


@dataclass
class ForwardBatch:
    """The tokens of one step. T rows, S sequences.

    token_ids (T,) i32; positions (T,) i32 position of each token in its sequence;
    seq_ids (T,) i32 row of block_tables for each token; block_tables (S, max_blocks) i32;
    slot_mapping (T,) i32 cache slot (block * block_size + offset) for each token's key/value;
    logits_rows (R,) i32 rows whose logits are wanted.
    """
    token_ids: np.ndarray
    positions: np.ndarray
    seq_ids: np.ndarray
    block_tables: np.ndarray
    slot_mapping: np.ndarray
    logits_rows: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])


class KVCache:
    """The paged key/value pool of every layer (see kernels.cpu.attention for the layout)."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int = 16, prefault: bool = False,
                 dtype: str = "float32"):
        """prefault: write every page now. Otherwise the OS maps pages at first touch, which costs
        ~3 ms per MB, paid inside whichever request first uses them (importing a 1000-token prefix
        from Redis took 190 ms of page faults against 2 ms of copying).
        dtype: "float32", or "float16" (half the memory and half the bytes attention reads; kept as
        uint16 bits, block_store.KV_DTYPES)."""
        if block_size % 16:
            raise ValueError(f"block_size must be a multiple of 16, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        storage = kv_storage(dtype)
        shape = (config.num_layers, num_blocks, config.num_kv_heads)
        # zeros (0.0 in both types), not empty: a slot never written must not hold NaN bit patterns
        self.k = np.zeros(shape + (config.head_dim, block_size), storage)
        self.v = np.zeros(shape + (block_size, config.head_dim), storage)
        if prefault:
            self.k.fill(0)
            self.v.fill(0)

    @property
    def bytes_per_block(self) -> int:
        return (self.k.nbytes + self.v.nbytes) // self.num_blocks

    def read_block(self, block_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of one block of every layer: k (L, KV, hd, bs), v (L, KV, bs, hd)."""
        return self.k[:, block_id].copy(), self.v[:, block_id].copy()

    def write_block(self, block_id: int, k: np.ndarray, v: np.ndarray) -> None:
        self.k[:, block_id] = k
        self.v[:, block_id] = v


class DecoderModel:
    """Every architecture of engine/architectures.py, on the CPU kernels.

    int8_activations=False (the default, "exact") keeps every activation in float32 and gives
    transformers' greedy tokens; True ("fast") quantizes activations to int8 in decode-sized steps,
    as llama.cpp does: faster, and like llama.cpp it flips near-tied tokens (SmolLM2's answer to
    "What is the capital of France?" among them)."""

    def __init__(self, gguf: GGUFFile, int8_activations: bool = False):
        self.gguf = gguf
        self.int8_activations = int8_activations
        self.config = cfg = ModelConfig.from_gguf(gguf)
        self.fingerprint = gguf.fingerprint()
        self.embedding = self._matrix("token_embd.weight", cfg.vocab_size, cfg.hidden_size)
        head_name = "token_embd.weight" if cfg.tied_embeddings else "output.weight"
        self.head = self._matrix(head_name, cfg.vocab_size, cfg.hidden_size)
        self.output_norm = self._vector("output_norm.weight", cfg.hidden_size)

        q_rows = cfg.num_heads * cfg.head_dim
        kv_rows = cfg.num_kv_heads * cfg.head_dim
        shapes = {  # (rows = out features, cols = in features)
            "attn_q": (q_rows, cfg.hidden_size), "attn_k": (kv_rows, cfg.hidden_size),
            "attn_v": (kv_rows, cfg.hidden_size), "attn_output": (cfg.hidden_size, q_rows),
            "ffn_gate": (cfg.intermediate_size, cfg.hidden_size),
            "ffn_up": (cfg.intermediate_size, cfg.hidden_size),
            "ffn_down": (cfg.hidden_size, cfg.intermediate_size),
        }
        if cfg.is_moe:
            E, Fe, Fs, D = cfg.num_experts, cfg.expert_intermediate_size, cfg.shared_expert_intermediate_size, \
                cfg.hidden_size
            shapes |= {"ffn_gate_exps": (E * Fe, D), "ffn_up_exps": (E * Fe, D), "ffn_down_exps": (E * D, Fe),
                       "ffn_gate_inp": (E, D), "ffn_gate_shexp": (Fs, D), "ffn_up_shexp": (Fs, D),
                       "ffn_down_shexp": (D, Fs), "ffn_gate_inp_shexp": (1, D)}
        self._load_layers(shapes)
        self._load_moe(shapes)
        self._rope_layout()
        self.attention_scale = np.float32(cfg.attention_scale or 1.0 / np.sqrt(cfg.head_dim))
        self.embedding_scale = np.float32(np.sqrt(cfg.hidden_size)) if cfg.traits.scale_embeddings else None

    def _load_layers(self, shapes: dict) -> None:
        """Each layer's seven matrices (views) and, by architecture, its norms, biases, head norms."""
        cfg = self.config
        traits = cfg.traits
        D, hd = cfg.hidden_size, cfg.head_dim
        q_rows, kv_rows = cfg.num_heads * hd, cfg.num_kv_heads * hd
        self.layer_weights = List()
        self.layer_types = np.empty((cfg.num_layers, MATRICES_PER_LAYER), np.int64)
        self.layer_norms = np.zeros((cfg.num_layers, NORMS_PER_LAYER, D), np.float32)
        self.qkv_bias = np.zeros((cfg.num_layers, q_rows + 2 * kv_rows), np.float32)
        self.head_norms = np.zeros((cfg.num_layers, 2, hd), np.float32)
        for layer in range(cfg.num_layers):
            blk = f"blk.{layer}"
            for i, name in enumerate(_MOE_LAYER_MATRICES if cfg.is_moe else _LAYER_MATRICES):
                tensor = self._matrix(f"{blk}.{name}.weight", *shapes[name])
                self.layer_weights.append(tensor.data)
                self.layer_types[layer, i] = tensor.ggml_type
            self.layer_norms[layer, ATTN_NORM] = self._vector(f"{blk}.attn_norm.weight", D)
            self.layer_norms[layer, FFN_NORM] = self._vector(f"{blk}.ffn_norm.weight", D)
            if traits.post_norms:
                self.layer_norms[layer, POST_ATTN_NORM] = self._vector(f"{blk}.post_attention_norm.weight", D)
                self.layer_norms[layer, POST_FFN_NORM] = self._vector(f"{blk}.post_ffw_norm.weight", D)
            if traits.qkv_bias:
                self.qkv_bias[layer, :q_rows] = self._vector(f"{blk}.attn_q.bias", q_rows)
                self.qkv_bias[layer, q_rows:q_rows + kv_rows] = self._vector(f"{blk}.attn_k.bias", kv_rows)
                self.qkv_bias[layer, q_rows + kv_rows:] = self._vector(f"{blk}.attn_v.bias", kv_rows)
            if traits.qk_norm:
                self.head_norms[layer, 0] = self._vector(f"{blk}.attn_q_norm.weight", hd)
                self.head_norms[layer, 1] = self._vector(f"{blk}.attn_k_norm.weight", hd)

    def _load_moe(self, shapes: dict) -> None:
        """An MoE model's router and shared-expert matrices, MOE_MATRICES_PER_LAYER per layer ((0, 0)
        placeholders where a model has none; one placeholder for a dense model), and expert_tokens
        (L, E): tokens routed to each expert of each layer in the last forward (router statistics)."""
        cfg = self.config
        self.moe_weights = List()
        self.moe_types = np.zeros((cfg.num_layers, MOE_MATRICES_PER_LAYER), np.int64)
        self.expert_tokens = np.zeros((cfg.num_layers, cfg.num_experts), np.int64)
        self.has_shared_expert = cfg.is_moe and cfg.traits.shared_expert and cfg.shared_expert_intermediate_size > 0
        placeholder = np.empty((0, 0), np.uint8)
        if not cfg.is_moe:
            self.moe_weights.append(placeholder)
            return
        for layer in range(cfg.num_layers):
            for i, name in enumerate(_MOE_EXTRA_MATRICES):
                if i > 0 and not self.has_shared_expert:
                    self.moe_weights.append(placeholder)
                    continue
                tensor = self._matrix(f"blk.{layer}.{name}.weight", *shapes[name])
                self.moe_weights.append(tensor.data)
                self.moe_types[layer, i] = tensor.ggml_type

    def _rope_layout(self) -> None:
        """One table of inverse frequencies per distinct RoPE base; layer_rope names each layer's,
        layer_window each layer's sliding window (0: global)."""
        cfg = self.config
        self.rope_inv_freq = self._inv_freq(cfg.rope_theta)
        tables = [self.rope_inv_freq]
        self.layer_rope = np.zeros(cfg.num_layers, np.int64)
        if cfg.sliding_window and cfg.local_rope_theta and cfg.local_rope_theta != cfg.rope_theta:
            tables.append(self._inv_freq(cfg.local_rope_theta, long_context=False))
            self.layer_rope[:] = [1 if cfg.is_local_layer(i) else 0 for i in range(cfg.num_layers)]
        self.rope_tables = tables
        self.layer_window = np.array(cfg.layer_windows, np.int64)

    def _inv_freq(self, base: float, long_context: bool = True) -> np.ndarray:
        """RoPE inverse frequencies (rope_dim/2,) f64. long_context: with the file's frequency factors
        (Llama 3.1) and linear scaling folded in; local (sliding-window) layers use neither."""
        cfg = self.config
        inv_freq = 1.0 / base ** (np.arange(0, cfg.rope_dim, 2, dtype=np.float64) / cfg.rope_dim)
        if not long_context:
            return inv_freq
        if self.gguf.has_tensor("rope_freqs.weight"):
            inv_freq = inv_freq / self._vector("rope_freqs.weight", cfg.rope_dim // 2).astype(np.float64)
        return inv_freq / cfg.rope_scale

    @classmethod
    def load(cls, path: str | os.PathLike, int8_activations: bool = False) -> DecoderModel:
        return cls(GGUFFile.open(path), int8_activations)

    def _matrix(self, name: str, rows: int, cols: int):
        tensor = self.gguf.tensor(name)
        if (tensor.rows, tensor.cols) != (rows, cols):
            raise GGUFError(f"{name}: shape {(tensor.rows, tensor.cols)} but the config implies {(rows, cols)}")
        if tensor.ggml_type not in SUPPORTED_TYPES:
            raise GGUFError(f"{name}: type {quant_type(tensor.ggml_type).name} has no kernel")
        return tensor

    def _vector(self, name: str, length: int) -> np.ndarray:
        tensor = self.gguf.tensor(name)
        if tensor.rows * tensor.cols != length or tensor.type_name != "F32":
            raise GGUFError(f"{name}: expected {length} float32 values")
        return tensor.data.view(np.float32).reshape(length)

    def new_kv_cache(self, num_blocks: int, block_size: int = 16, prefault: bool = False,
                     dtype: str = "float32") -> KVCache:
        return KVCache(self.config, num_blocks, block_size, prefault, dtype)

    def embed_and_rope(self, batch: ForwardBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stack's inputs: the embedded tokens x (T, D) and the rope tables cos, sin (R, T, rope_dim/2)."""
        cfg = self.config
        T = batch.num_tokens
        x = np.empty((T, cfg.hidden_size), np.float32)
        embed(batch.token_ids, self.embedding.data, self.embedding.ggml_type, x)
        if self.embedding_scale is not None:
            x *= self.embedding_scale
        cos = np.empty((len(self.rope_tables), T, cfg.rope_dim // 2), np.float32)
        sin = np.empty_like(cos)
        for i, inv_freq in enumerate(self.rope_tables):
            rope_tables(batch.positions, inv_freq, cos[i], sin[i])
        return x, cos, sin

    def forward_hidden(self, batch: ForwardBatch, kv_cache: KVCache) -> np.ndarray:
        """Run the decoder stack (writing the step's keys and values); the final hidden states."""
        cfg = self.config
        x, cos, sin = self.embed_and_rope(batch)
        traits = cfg.traits
        decoder_stack(x, self.layer_weights, self.layer_types, self.layer_norms, self.qkv_bias, self.head_norms,
                      kv_cache.k, kv_cache.v, cos, sin, self.layer_rope, self.layer_window,
                      batch.block_tables, batch.seq_ids, batch.positions, batch.slot_mapping,
                      cfg.num_heads, cfg.rms_norm_eps, self.attention_scale, traits.rope_mode == ROPE_NEOX,
                      traits.ffn_activation == FFN_GELU_TANH, traits.qkv_bias, traits.qk_norm, traits.post_norms,
                      self.int8_activations, self.moe_weights, self.moe_types, cfg.num_experts_used,
                      cfg.expert_weights_norm, np.float32(cfg.expert_weights_scale), self.has_shared_expert,
                      self._zeroed_expert_tokens())
        return x

    def _zeroed_expert_tokens(self) -> np.ndarray:
        """expert_tokens emptied for the next forward; (L, 1) for a dense model (unused)."""
        if self.expert_tokens.shape[1] == 0:
            return np.zeros((self.config.num_layers, 1), np.int64)
        self.expert_tokens[:] = 0
        return self.expert_tokens

    def forward(self, batch: ForwardBatch, kv_cache: KVCache) -> np.ndarray:
        """Logits (len(batch.logits_rows), vocab) f32 for the rows asked for; writes the step's K/V."""
        cfg = self.config
        x = self.forward_hidden(batch, kv_cache)
        logits = np.empty((batch.logits_rows.shape[0], cfg.vocab_size), np.float32)
        output_logits(x, batch.logits_rows, self.output_norm, cfg.rms_norm_eps,
                      self.head.data, self.head.ggml_type, logits, self.int8_activations)
        return logits
