"""Token-aware chunking with overlap. Plain logic on the tokenizer's character offsets.

A document is cut into windows of at most `chunk_tokens` embedding-model tokens, each starting
`chunk_tokens - overlap_tokens` tokens after the previous one, so every token appears in at least
one chunk and neighbouring chunks share `overlap_tokens` tokens of context. A window ends, where it
can, at a paragraph or sentence end found in its last quarter, so chunks read as whole passages.
Chunk text is an exact slice of the document: [start, end) character offsets are kept.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_BREAK = re.compile(r"\n\s*\n|(?<=[.!?:])\s")


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int          # character offsets into the document
    end: int
    text: str
    tokens: int


@dataclass(frozen=True)
class ChunkingConfig:
    chunk_tokens: int = 160
    overlap_tokens: int = 32

    def __post_init__(self):
        if self.chunk_tokens < 8 or not 0 <= self.overlap_tokens < self.chunk_tokens // 2:
            raise ValueError("chunk_tokens must be >= 8 and overlap_tokens in [0, chunk_tokens/2)")


def chunk_text(text: str, offsets_of: Callable[[str], list[tuple[int, int]]], config: ChunkingConfig) -> list[Chunk]:
    """offsets_of(text): (start, end) character offsets of each token (special tokens excluded)."""
    offsets = [o for o in offsets_of(text) if o[1] > o[0]]
    if not offsets:
        return [Chunk(0, 0, len(text), text, 0)] if text.strip() else []
    chunks = []
    first = 0
    n = len(offsets)
    while True:
        last = min(first + config.chunk_tokens, n) - 1            # inclusive token index
        if last < n - 1:
            last = _snap_to_break(text, offsets, first, last, config.chunk_tokens // 4)
        start, end = offsets[first][0], offsets[last][1]
        chunks.append(Chunk(len(chunks), start, end, text[start:end], last - first + 1))
        if last >= n - 1:
            return chunks
        first = max(last + 1 - config.overlap_tokens, first + 1)


def _snap_to_break(text: str, offsets, first: int, last: int, window: int) -> int:
    """The token ending the last paragraph/sentence break in the window's final `window` tokens."""
    lo = max(first + 1, last - window)
    region_start, region_end = offsets[lo][0], offsets[last][1]
    best = None
    for m in _BREAK.finditer(text, region_start, region_end):
        best = m.start()
    if best is None:
        return last
    for i in range(last, lo - 1, -1):
        if offsets[i][1] <= best:
            return i
    return last
