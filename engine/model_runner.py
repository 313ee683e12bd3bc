"""Turns a scheduler step into the model's input arrays, runs it, and hands back logits.

This is the only place where the bookkeeping (lists of ints) meets arrays.
"""
from __future__ import annotations

import numpy as np

from .model import DecoderModel, ForwardBatch, KVCache
from .sequence import Sequence


class ModelRunner:
    def __init__(self, model: DecoderModel, kv_cache: KVCache):
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = kv_cache.block_size

    def build_batch(self, chunks: list[tuple[Sequence, int]]) -> tuple[ForwardBatch, list[Sequence]]:
        """The batch for (sequence, tokens to compute) chunks, and the sequences that get logits:
        those whose chunk reaches their last token (one row), or their last draft (a row for the
        last token and one per draft)."""
        bs = self.block_size
        total = sum(n for _, n in chunks)
        token_ids = np.empty(total, np.int32)
        positions = np.empty(total, np.int32)
        seq_ids = np.empty(total, np.int32)
        slot_mapping = np.empty(total, np.int32)
        width = max(len(seq.block_table) for seq, _ in chunks)
        block_tables = np.zeros((len(chunks), width), np.int32)
        logits_rows, sampled = [], []
        row = 0
        for s, (seq, n) in enumerate(chunks):
            start = seq.num_computed_tokens
            table = np.asarray(seq.block_table, np.int32)
            block_tables[s, :table.shape[0]] = table
            pos = np.arange(start, start + n, dtype=np.int32)
            tokens = seq.token_ids[start:start + n]
            token_ids[row:row + len(tokens)] = tokens
            token_ids[row + len(tokens):row + n] = seq.draft_ids[:n - len(tokens)]
            positions[row:row + n] = pos
            seq_ids[row:row + n] = s
            slot_mapping[row:row + n] = table[pos // bs] * bs + pos % bs
            row += n
            if start + n == seq.num_tokens + len(seq.draft_ids):
                logits_rows.extend(range(row - 1 - len(seq.draft_ids), row))
                sampled.append(seq)
        batch = ForwardBatch(token_ids, positions, seq_ids, block_tables, slot_mapping,
                             np.asarray(logits_rows, np.int32))
        return batch, sampled

    def run(self, chunks: list[tuple[Sequence, int]]) -> list[tuple[Sequence, np.ndarray | tuple[int, float]]]:
        """Compute the chunks' keys and values. For the sequences done: (sequence, logits of its last
        token), or (sequence, logits (1 + drafts, vocab)) for one with drafts, or, on a model that
        samples on its device (CudaLlamaModel.sample) when every such sequence's settings allow it,
        (sequence, (token id, logprob)): then no logits leave the device."""
        batch, sampled = self.build_batch(chunks)
        if not sampled:
            self.model.forward_hidden(batch, self.kv_cache)
            return []
        vocab = self.model.config.vocab_size
        if hasattr(self.model, "sample") and all(seq.wants_device_sampling() for seq in sampled):
            draws = [seq.sampler.device_draw(vocab) for seq in sampled]
            temperatures, top_ks, uniforms = (np.array(column) for column in zip(*draws, strict=True))
            ids, logprobs = self.model.sample(batch, self.kv_cache, temperatures.astype(np.float32),
                                              top_ks.astype(np.int32), uniforms.astype(np.float64))
            return [(seq, (int(t), float(lp))) for seq, t, lp in zip(sampled, ids, logprobs, strict=True)]
        logits = self.model.forward(batch, self.kv_cache)
        results, row = [], 0
        for seq in sampled:
            if seq.draft_ids:
                results.append((seq, logits[row:row + 1 + len(seq.draft_ids)]))
                row += 1 + len(seq.draft_ids)
            else:
                results.append((seq, logits[row]))
                row += 1
        return results
