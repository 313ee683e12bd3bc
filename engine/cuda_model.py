"""The Llama model on an NVIDIA GPU: DecoderModel's interface, numba.cuda kernels underneath.

Weights are uploaded once, as the GGUF file's raw quantized bytes (the kernels dequantize inside
the matmuls); the KV block pool lives on the device. A step copies its batch description in (one
int32 buffer) and copies out only what it returns: logits for `forward`, or just the sampled ids
and their logprobs for `sample` (the device-side decode path).

The scheduler, block manager and Redis block store are unchanged: blocks move between the device
pool and the store as raw bytes through CudaKVCache.read_block / write_block.
"""
from __future__ import annotations

import logging
import os

import numpy as np
from numba import cuda

from .gguf_file import GGUFError, GGUFFile
from .kernels.cuda.attention import copy_block_in, copy_block_out, query_tiles
from .kernels.cuda.dequant import SUPPORTED as CUDA_TYPES
from .kernels.cuda.launch import MAX_HEAD_DIM
from .kernels.cuda.llama import Workspace, decoder_stack, output_logits
from .kernels.cuda.ops import embed, fill, rope_tables
from .kernels.cuda.sampling import sample
from .model import DecoderModel, ForwardBatch
from .model_config import ModelConfig
from .quants import quant_type

log = logging.getLogger(__name__)
# The CUDA decoder stack has no biases, per-head norms, post norms, GELU or sliding window yet.
CUDA_ARCHITECTURES = ("llama", "mistral")


class CudaKVCache:
    """KVCache's layout and attributes, in device memory: k (L, blocks, KV, hd, bs), v (L, blocks, KV, bs, hd) f32."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int = 16, prefault: bool = False):
        """prefault: accepted for KVCache's signature; device memory is always zeroed here."""
        if block_size % 16:
            raise ValueError(f"block_size must be a multiple of 16, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        L, KV, hd = config.num_layers, config.num_kv_heads, config.head_dim
        self.k = cuda.device_array((L, num_blocks, KV, hd, block_size), np.float32)
        self.v = cuda.device_array((L, num_blocks, KV, block_size, hd), np.float32)
        for a in (self.k, self.v):          # zeros: a slot never written must not hold NaN bit patterns
            fill(a.reshape(-1), np.float32(0.0))
        self.k_layers = [self.k[layer] for layer in range(L)]
        self.v_layers = [self.v[layer] for layer in range(L)]
        per_block = KV * hd * block_size
        self._k_flat = self.k.reshape(L, num_blocks, per_block)
        self._v_flat = self.v.reshape(L, num_blocks, per_block)
        self._staging = cuda.device_array((L, per_block), np.float32)
        self._block_shape_k = (L, KV, hd, block_size)
        self._block_shape_v = (L, KV, block_size, hd)

    @property
    def bytes_per_block(self) -> int:
        return (self.k.nbytes + self.v.nbytes) // self.num_blocks

    def read_block(self, block_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of one block of every layer: k (L, KV, hd, bs), v (L, KV, bs, hd)."""
        copy_block_out(self._k_flat, block_id, self._staging)
        k = self._staging.copy_to_host().reshape(self._block_shape_k)
        copy_block_out(self._v_flat, block_id, self._staging)
        v = self._staging.copy_to_host().reshape(self._block_shape_v)
        return k, v

    def write_block(self, block_id: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store host arrays k (L, KV, hd, bs), v (L, KV, bs, hd) as block block_id of every layer."""
        for host, flat in ((k, self._k_flat), (v, self._v_flat)):
            self._staging.copy_to_device(np.ascontiguousarray(host, np.float32).reshape(self._staging.shape))
            copy_block_in(self._staging, block_id, flat)


class CudaLlamaModel:
    """DecoderModel on the GPU. Activations are float32 (int8_activations is not supported here)."""

    device = "cuda"

    def __init__(self, gguf: GGUFFile, int8_activations: bool = False):
        if int8_activations:
            log.warning("int8 activations (--fast) are a CPU mode: the CUDA backend computes in float32")
        host = DecoderModel(gguf)                     # validates shapes and types; views, no copies
        if host.config.architecture not in CUDA_ARCHITECTURES:
            raise GGUFError(f"architecture {host.config.architecture!r} runs on the CPU backend only for now "
                            f"(CUDA kernels cover {', '.join(CUDA_ARCHITECTURES)}): use --device cpu")
        if host.config.is_moe:
            raise GGUFError(f"{host.config.num_experts}-expert Mixture-of-Experts models run on the CPU backend "
                            "only for now (no CUDA grouped-expert kernel yet): use --device cpu")
        types = {host.embedding.ggml_type, host.head.ggml_type, *(int(t) for t in host.layer_types.ravel())}
        lacking = sorted(types - set(CUDA_TYPES))
        if lacking:                                   # the CPU kernels have more types than the CUDA ones
            names = ", ".join(quant_type(t).name for t in lacking)
            raise GGUFError(f"tensor type {names} has no CUDA kernel yet: run this model with --device cpu")
        self.gguf = gguf
        self.int8_activations = False
        self.config = cfg = host.config
        self.fingerprint = host.fingerprint
        if cfg.head_dim > MAX_HEAD_DIM:
            raise GGUFError(f"head_dim {cfg.head_dim} exceeds the CUDA kernels' {MAX_HEAD_DIM}")

        def upload(a):
            return cuda.to_device(np.ascontiguousarray(a))
        self.embedding_type = host.embedding.ggml_type
        self.embedding = upload(host.embedding.data)
        self.head_type = host.head.ggml_type
        self.head = self.embedding if cfg.tied_embeddings else upload(host.head.data)
        self.output_norm = upload(host.output_norm)
        self.layer_weights = [upload(w) for w in host.layer_weights]
        self.layer_types = host.layer_types.copy()   # host: they choose which kernel to launch
        self.layer_norms = upload(host.layer_norms)
        self.rope_inv_freq = upload(host.rope_inv_freq)
        self._workspace = Workspace()

    @classmethod
    def load(cls, path: str | os.PathLike, int8_activations: bool = False) -> CudaLlamaModel:
        return cls(GGUFFile.open(path), int8_activations)

    def new_kv_cache(self, num_blocks: int, block_size: int = 16, prefault: bool = False,
                     dtype: str = "float32") -> CudaKVCache:
        if dtype != "float32":
            raise ValueError(f"the CUDA backend keeps its KV cache in float32; a {dtype} cache is CPU-only")
        return CudaKVCache(self.config, num_blocks, block_size, prefault)

    # ------------------------------------------------------------------ the step

    def _upload(self, batch: ForwardBatch):
        """The batch's int32 arrays on the device, from one host-to-device copy."""
        tiles, singles = query_tiles(batch.seq_ids, batch.positions)
        parts = [batch.token_ids, batch.positions, batch.seq_ids, batch.slot_mapping, batch.logits_rows,
                 singles, tiles.reshape(-1), batch.block_tables.reshape(-1)]
        packed = np.concatenate([np.asarray(p, np.int32).reshape(-1) for p in parts])
        buf = self._workspace.get("batch", packed.shape[0], (), np.int32)
        buf.copy_to_device(packed)
        views, start = [], 0
        for p in parts:
            views.append(buf[start:start + p.size])
            start += p.size
        token_ids, positions, seq_ids, slots, logits_rows, singles_d, tiles_d, tables = views
        return (token_ids, positions, seq_ids, slots, logits_rows, singles_d,
                tiles_d.reshape(tiles.shape), tables.reshape(batch.block_tables.shape))

    def _forward_device(self, batch: ForwardBatch, kv_cache: CudaKVCache):
        """The decoder stack on the device; (hidden states (T, D), logits rows (R,)) device arrays."""
        cfg = self.config
        T = batch.num_tokens
        token_ids, positions, seq_ids, slots, logits_rows, singles, tiles, tables = self._upload(batch)
        ws = self._workspace
        x = ws.get("x", T, (cfg.hidden_size,))
        embed(token_ids, self.embedding, self.embedding_type, x)
        cos = ws.get("cos", T, (cfg.rope_dim // 2,))
        sin = ws.get("sin", T, (cfg.rope_dim // 2,))
        rope_tables(positions, self.rope_inv_freq, cos, sin)
        decoder_stack(x, self.layer_weights, self.layer_types, self.layer_norms, kv_cache.k_layers,
                      kv_cache.v_layers, cos, sin, tables, seq_ids, positions, slots, cfg.num_heads,
                      cfg.rms_norm_eps, tiles, singles, ws)
        return x, logits_rows

    def _logits_device(self, batch: ForwardBatch, kv_cache: CudaKVCache):
        cfg = self.config
        x, rows = self._forward_device(batch, kv_cache)
        logits = self._workspace.get("logits", rows.shape[0], (cfg.vocab_size,))
        output_logits(x, rows, self.output_norm, cfg.rms_norm_eps, self.head, self.head_type, logits,
                      self._workspace)
        return logits

    def forward_hidden(self, batch: ForwardBatch, kv_cache: CudaKVCache) -> np.ndarray:
        """Run the decoder stack (writing the step's keys and values); the final hidden states (host)."""
        x, _ = self._forward_device(batch, kv_cache)
        return x.copy_to_host()

    def forward(self, batch: ForwardBatch, kv_cache: CudaKVCache) -> np.ndarray:
        """Logits (len(batch.logits_rows), vocab) f32 (host) for the rows asked for; writes the step's K/V."""
        if batch.logits_rows.shape[0] == 0:
            self._forward_device(batch, kv_cache)
            return np.empty((0, self.config.vocab_size), np.float32)
        return self._logits_device(batch, kv_cache).copy_to_host()

    def sample(self, batch: ForwardBatch, kv_cache: CudaKVCache, temperatures: np.ndarray, top_ks: np.ndarray,
               uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A step that samples on the device: (token ids (R,) i32, their logprobs (R,) f32) for the
        logits rows, drawn as kernels.cuda.sampling describes; temperatures (R,) f32 (0 = greedy),
        top_ks (R,) i32 (0 = off), uniforms (R,) f64 in [0, 1), one per row."""
        R = batch.logits_rows.shape[0]
        if R == 0:
            self._forward_device(batch, kv_cache)
            return np.empty(0, np.int32), np.empty(0, np.float32)
        logits = self._logits_device(batch, kv_cache)
        ws = self._workspace
        params = ws.get("sampling_f64", 2 * R, (), np.float64)
        params.copy_to_device(np.concatenate([np.asarray(temperatures, np.float64),
                                              np.asarray(uniforms, np.float64)]))
        top_k_d = ws.get("sampling_k", R, (), np.int32)
        top_k_d.copy_to_device(np.asarray(top_ks, np.int32))
        ids = ws.get("sampled_ids", R, (), np.int32)
        logprobs = ws.get("sampled_logprobs", R, (), np.float32)
        sample(logits, params[:R], top_k_d, params[R:], ids, logprobs)
        return ids.copy_to_host(), logprobs.copy_to_host()
