"""Tiny random Mixture-of-Experts models: Mixtral (GGUF arch "llama" with experts) and Qwen2-MoE
("qwen2moe", with a shared expert), as GGUF files in F32, Q8_0 or Q4_K, and the same weights in
transformers' layout for the reference logits (tests/golden_tools/make_moe_fixtures.py).

NumPy and gguf-py only (no engine, no torch), deterministic from a fixed seed, so the tests write
the GGUF files at run time and compare with logits transformers computed once on the very same
weights. The weights are drawn as floats in transformers' layout, quantized the way llama.cpp's
converter lays them out (Wq/Wk rows permuted for "llama"; experts stacked expert-slowest), and
dequantized back with gguf-py: `hf_weights` gives those dequantized floats, which are exactly what
a GGUF reader computes with. gguf-py has no Q4_K quantizer; `quantize_q4_k` is a plain one.

Vocabulary: <|endoftext|> then the 256 bytes as GPT-2 byte-level tokens, no merges, so token id =
1 + byte and any text encodes (`prompt_ids`); our tokenizer loads it as a "gpt2" BPE.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

VOCAB = 257
CONTEXT = 256
ROPE_BASE = 10000.0
RMS_EPS = 1e-5
QUANTS = ("F32", "Q8_0", "Q4_K")
PROMPTS = ("The capital of", "def f(x):", "Experts route", "1, 2, 3,")
GREEDY_TOKENS = 12


@dataclass(frozen=True)
class MoESpec:
    name: str
    architecture: str          # GGUF general.architecture
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    experts: int
    experts_used: int
    expert_ffn: int
    shared_ffn: int            # 0: no shared expert
    dense_ffn: int             # feed_forward_length (Mixtral: the experts' width; Qwen2-MoE: unused)
    norm_topk_prob: bool
    seed: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# widths of 256: Q4_K's blocks are 256 wide (llama.cpp falls back to other types below that)
SPECS = {
    "mixtral": MoESpec("mixtral", "llama", layers=2, hidden=256, heads=4, kv_heads=2, experts=8, experts_used=2,
                       expert_ffn=256, shared_ffn=0, dense_ffn=256, norm_topk_prob=True, seed=17),
    "qwen2moe": MoESpec("qwen2moe", "qwen2moe", layers=3, hidden=256, heads=4, kv_heads=2, experts=4,
                        experts_used=2, expert_ffn=256, shared_ffn=512, dense_ffn=512, norm_topk_prob=False,
                        seed=18),
}


def prompt_ids(text: str) -> list[int]:
    return [1 + b for b in text.encode("utf-8")]


# ----------------------------------------------------------------------------- quantization

def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) f32 -> (rows, cols/256*144) u8 in GGML's block_q4_K: per 256 values an f16 d
    and dmin, 8 six-bit (scale, min) pairs packed in 12 bytes, 4-bit q; w = d*sc*q - dmin*m."""
    rows, cols = x.shape
    b = x.astype(np.float32).reshape(-1, 8, 32)                       # blocks, sub-blocks, values
    lo = np.minimum(b.min(axis=2), 0.0)
    scale = (b.max(axis=2) - lo) / 15.0
    d = (scale.max(axis=1) / 63.0).astype(np.float16)
    dmin = ((-lo).max(axis=1) / 63.0).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(0, 63).astype(np.uint8)
        mn = np.where(dmin32 > 0, np.rint(-lo / dmin32), 0).clip(0, 63).astype(np.uint8)
        step = (d32 * sc)[:, :, None]
        q = np.where(step > 0, np.rint((b + (dmin32 * mn)[:, :, None]) / step), 0).clip(0, 15).astype(np.uint8)
    scales = np.zeros((b.shape[0], 12), np.uint8)
    scales[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    scales[:, 4:8] = mn[:, 0:4] | ((mn[:, 4:8] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:8] & 0xF) | ((mn[:, 4:8] & 0xF) << 4)
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(-1, 128)      # sub-blocks 2i (low), 2i+1 (high)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales, qs], axis=1)
    return blocks.reshape(rows, cols // 256 * 144)


def quantize(x: np.ndarray, type_name: str) -> np.ndarray:
    """(rows, cols) f32 -> GGML bytes (rows, row_bytes) u8 (F32: the floats' bytes)."""
    if type_name == "F32":
        return np.ascontiguousarray(x, np.float32).view(np.uint8)
    if type_name == "Q4_K":
        return quantize_q4_k(x)
    return gguf.quants.quantize(np.ascontiguousarray(x, np.float32), gguf.GGMLQuantizationType[type_name])


def dequantize(data: np.ndarray, type_name: str, cols: int) -> np.ndarray:
    if type_name == "F32":
        return data.view(np.float32).reshape(data.shape[0], cols).copy()
    return gguf.quants.dequantize(data, gguf.GGMLQuantizationType[type_name]).reshape(data.shape[0], cols)


def permute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permute of Wq / Wk for GGML's "normal" RoPE (pairs, not halves)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- the model

def _draw(spec: MoESpec) -> dict[str, np.ndarray]:
    """Random float weights in transformers' layout; experts as (E, out, in) arrays."""
    rng = np.random.default_rng(spec.seed)
    D, hd, E = spec.hidden, spec.head_dim, spec.experts

    def normal(*shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_weight():
        return (1.0 + 0.1 * rng.standard_normal(D)).astype(np.float32)

    t = {"model.embed_tokens.weight": normal(VOCAB, D, std=1.0), "model.norm.weight": norm_weight(),
         "lm_head.weight": normal(VOCAB, D, std=0.1)}
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm_weight()
        t[p + "post_attention_layernorm.weight"] = norm_weight()
        for name, rows in (("q", spec.heads * hd), ("k", spec.kv_heads * hd), ("v", spec.kv_heads * hd)):
            t[p + f"self_attn.{name}_proj.weight"] = normal(rows, D, std=0.08)
            if spec.architecture == "qwen2moe":
                t[p + f"self_attn.{name}_proj.bias"] = normal(rows, std=0.2)
        t[p + "self_attn.o_proj.weight"] = normal(D, spec.heads * hd, std=0.08)
        t[p + "mlp.gate.weight"] = normal(E, D, std=0.3)         # the router: logits of a few units
        t[p + "mlp.experts.gate"] = normal(E, spec.expert_ffn, D, std=0.08)
        t[p + "mlp.experts.up"] = normal(E, spec.expert_ffn, D, std=0.08)
        t[p + "mlp.experts.down"] = normal(E, D, spec.expert_ffn, std=0.08)
        if spec.shared_ffn:
            t[p + "mlp.shared_expert.gate_proj.weight"] = normal(spec.shared_ffn, D, std=0.08)
            t[p + "mlp.shared_expert.up_proj.weight"] = normal(spec.shared_ffn, D, std=0.08)
            t[p + "mlp.shared_expert.down_proj.weight"] = normal(D, spec.shared_ffn, std=0.06)
            t[p + "mlp.shared_expert_gate.weight"] = normal(1, D, std=0.1)
    return t


def _gguf_tensors(spec: MoESpec, quant: str) -> list[tuple[str, np.ndarray, str, np.ndarray]]:
    """(GGUF name, GGML bytes or f32 array, type name, the dequantized floats in transformers' layout)."""
    hf = _draw(spec)
    out = []

    def matrix(name, w, type_name, permute_heads=0):
        stored = permute_rows(w, permute_heads) if permute_heads else w
        data = quantize(stored.reshape(-1, stored.shape[-1]), type_name)
        back = dequantize(data, type_name, stored.shape[-1]).reshape(stored.shape)
        back = unpermute_rows(back, permute_heads) if permute_heads else back
        out.append((name, data.reshape(*stored.shape[:-1], data.shape[-1]), type_name, back))

    def vector(name, v):
        out.append((name, v.astype(np.float32), "F32", v.astype(np.float32)))

    llama = spec.architecture == "llama"
    matrix("token_embd.weight", hf["model.embed_tokens.weight"], quant)
    vector("output_norm.weight", hf["model.norm.weight"])
    matrix("output.weight", hf["lm_head.weight"], quant)
    for i in range(spec.layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        vector(b + "attn_norm.weight", hf[p + "input_layernorm.weight"])
        vector(b + "ffn_norm.weight", hf[p + "post_attention_layernorm.weight"])
        matrix(b + "attn_q.weight", hf[p + "self_attn.q_proj.weight"], quant, spec.heads if llama else 0)
        matrix(b + "attn_k.weight", hf[p + "self_attn.k_proj.weight"], quant, spec.kv_heads if llama else 0)
        matrix(b + "attn_v.weight", hf[p + "self_attn.v_proj.weight"], quant)
        matrix(b + "attn_output.weight", hf[p + "self_attn.o_proj.weight"], quant)
        if not llama:
            for name in "qkv":
                vector(b + f"attn_{name}.bias", hf[p + f"self_attn.{name}_proj.bias"])
        matrix(b + "ffn_gate_inp.weight", hf[p + "mlp.gate.weight"], "F32")   # llama.cpp keeps routers F32
        matrix(b + "ffn_gate_exps.weight", hf[p + "mlp.experts.gate"], quant)
        matrix(b + "ffn_up_exps.weight", hf[p + "mlp.experts.up"], quant)
        matrix(b + "ffn_down_exps.weight", hf[p + "mlp.experts.down"], quant)
        if spec.shared_ffn:
            matrix(b + "ffn_gate_shexp.weight", hf[p + "mlp.shared_expert.gate_proj.weight"], quant)
            matrix(b + "ffn_up_shexp.weight", hf[p + "mlp.shared_expert.up_proj.weight"], quant)
            matrix(b + "ffn_down_shexp.weight", hf[p + "mlp.shared_expert.down_proj.weight"], quant)
            vector(b + "ffn_gate_inp_shexp.weight", hf[p + "mlp.shared_expert_gate.weight"].reshape(-1))
    return out


_HF_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate_inp": "mlp.gate", "ffn_gate_exps": "mlp.experts.gate",
             "ffn_up_exps": "mlp.experts.up", "ffn_down_exps": "mlp.experts.down",
             "ffn_gate_shexp": "mlp.shared_expert.gate_proj", "ffn_up_shexp": "mlp.shared_expert.up_proj",
             "ffn_down_shexp": "mlp.shared_expert.down_proj", "ffn_gate_inp_shexp": "mlp.shared_expert_gate"}


def hf_weights(spec: MoESpec, quant: str) -> dict[str, np.ndarray]:
    """The dequantized weights in transformers' names and layout (experts: mlp.experts.{gate,up,down}
    (E, out, in); the caller fuses them as its transformers version wants)."""
    weights = {}
    for name, _, _, floats in _gguf_tensors(spec, quant):
        if name in _HF_NAMES:
            weights[_HF_NAMES[name]] = floats
            continue
        _, layer, base, kind = name.split(".")
        hf = f"model.layers.{layer}.{_HF_NAMES[base]}"
        if not base.endswith("_exps"):
            hf += f".{kind}"
        if base == "ffn_gate_inp_shexp":
            floats = floats.reshape(1, -1)
        weights[hf] = floats
    return weights


def write_moe_gguf(path: Path, spec: MoESpec, quant: str, merges: tuple[str, ...] = ()) -> Path:
    """The model as GGUF. `merges`: BPE merges to list (none by default; llama.cpp refuses a "gpt2"
    vocabulary without any, and token ids fed to it directly never meet them)."""
    w = gguf.GGUFWriter(str(path), spec.architecture)
    w.add_name(f"tiny-random-{spec.name}-{quant}")
    w.add_block_count(spec.layers)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(spec.hidden)
    w.add_feed_forward_length(spec.dense_ffn)
    w.add_head_count(spec.heads)
    w.add_head_count_kv(spec.kv_heads)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_expert_count(spec.experts)
    w.add_expert_used_count(spec.experts_used)
    if spec.architecture == "qwen2moe":
        w.add_expert_feed_forward_length(spec.expert_ffn)
        w.add_expert_shared_feed_forward_length(spec.shared_ffn)
    w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                     "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_M}[quant])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(["<|endoftext|>"] + _byte_level_tokens())
    w.add_token_types([3] + [1] * 256)
    w.add_token_merges(list(merges))
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    for name, data, type_name, _ in _gguf_tensors(spec, quant):
        if type_name == "F32":
            w.add_tensor(name, data.view(np.float32) if data.dtype == np.uint8 else data)
        else:
            w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[type_name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _byte_level_tokens() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]
