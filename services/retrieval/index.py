"""Hybrid search over the chunks: lexical BM25 (bm25s) and dense cosine, fused by reciprocal rank.

The index lives in memory and is rebuilt from Redis (DocumentStore.load_all): at start, and
whenever the documents' version changes (an ingest here or on another replica).

Lexical tokens are lower-cased words, Snowball-stemmed (PyStemmer: "raises" finds "raised"),
with no stop-word list: in a corpus about a programming language, "with", "for", "if" and "in" are
the words that matter, and BM25's IDF already weighs down the words every chunk has. What BM25
and the encoder see of a chunk is its contextual header and its text (ChunkRecord.indexed_text).
Hybrid ranking is reciprocal rank fusion (RRF, k = 60) over each ranking's top candidates: robust
to the two scores' different scales; each ranking's votes may be weighted (SearchSettings).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import bm25s
import numpy as np
import Stemmer

from .store import ChunkRecord

RRF_K = 60


class SearchMode(enum.IntEnum):
    HYBRID = 0
    LEXICAL = 1
    DENSE = 2


@dataclass
class Hit:
    record: ChunkRecord
    score: float                  # what the mode ranks by (RRF score for hybrid)
    lexical_score: float
    dense_score: float
    lexical_rank: int             # 1-based; 0 when the chunk has no query word
    dense_rank: int


@dataclass(frozen=True)
class SearchSettings:
    stemming: bool = True            # Snowball English stems in BM25 (query and chunks alike)
    lexical_weight: float = 1.0      # RRF votes of the BM25 ranking ...
    dense_weight: float = 1.0        # ... and of the dense one


def _stemmer(enabled: bool):
    # a fresh one per call: PyStemmer's stemmers are not thread-safe, and the index is built in a
    # worker thread while the event loop's searches tokenize queries
    return Stemmer.Stemmer("english").stemWords if enabled else None


def lexical_tokens(texts: list[str], stemming: bool = True) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords=None, stemmer=_stemmer(stemming), show_progress=False,
                          return_ids=False)


class SearchIndex:
    def __init__(self, version: int, records: list[ChunkRecord], dims: int,
                 settings: SearchSettings = SearchSettings()):
        self.version = version
        self.settings = settings
        self.records = records
        self.embeddings = (np.stack([r.embedding for r in records]) if records
                           else np.zeros((0, dims), np.float32))
        self.sources = np.array([r.source for r in records], dtype=object)
        self.bm25 = None
        if records:
            self.bm25 = bm25s.BM25()
            self.bm25.index(bm25s.tokenize([r.indexed_text for r in records], stopwords=None,
                                           stemmer=_stemmer(settings.stemming), show_progress=False),
                            show_progress=False)

    def __len__(self) -> int:
        return len(self.records)

    def search(self, query: str, query_vector: np.ndarray, mode: SearchMode, top_k: int,
               sources: list[str] | None = None) -> list[Hit]:
        n = len(self.records)
        if n == 0:
            return []
        allowed = np.isin(self.sources, sources) if sources else np.ones(n, bool)
        dense = self.embeddings @ query_vector.astype(np.float32)
        words = lexical_tokens([query], self.settings.stemming)[0]
        # a query with no word of two letters or more ("?", "a") has no lexical match (bm25s raises)
        lexical = (np.asarray(self.bm25.get_scores(words), dtype=np.float64) if words
                   else np.zeros(n, np.float64))
        dense_order = [i for i in np.argsort(-dense, kind="stable") if allowed[i]]
        lexical_order = [i for i in np.argsort(-lexical, kind="stable") if allowed[i] and lexical[i] > 0]
        dense_rank = {int(i): r + 1 for r, i in enumerate(dense_order)}
        lexical_rank = {int(i): r + 1 for r, i in enumerate(lexical_order)}
        if mode == SearchMode.DENSE:
            ranked = [(int(i), float(dense[i])) for i in dense_order[:top_k]]
        elif mode == SearchMode.LEXICAL:
            ranked = [(int(i), float(lexical[i])) for i in lexical_order[:top_k]]
        else:
            depth = max(50, 5 * top_k)
            fused: dict[int, float] = {}
            for order, weight in ((dense_order[:depth], self.settings.dense_weight),
                                  (lexical_order[:depth], self.settings.lexical_weight)):
                for rank, i in enumerate(order, start=1):
                    fused[int(i)] = fused.get(int(i), 0.0) + weight / (RRF_K + rank)
            ranked = sorted(fused.items(), key=lambda kv: (-kv[1], dense_rank.get(kv[0], n)))[:top_k]
        return [Hit(self.records[i], score, float(lexical[i]), float(dense[i]), lexical_rank.get(i, 0),
                    dense_rank.get(i, 0)) for i, score in ranked]
