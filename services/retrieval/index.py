"""Hybrid search over the chunks: lexical BM25 (bm25s) and dense cosine, fused into one score.

The index lives in memory and is rebuilt from Redis (DocumentStore.load_all): at start, and
whenever the documents' version changes (an ingest here or on another replica).

Lexical tokens are lower-cased words of any length and operator symbols ("&", "**", "->", "<="),
Snowball-stemmed (PyStemmer: "raises" finds "raised"), with no stop-word list: in a corpus about
a programming language, "with", "for", "if", "x" and "&" are the words that matter ("What does
the & operator compute?"), and BM25's IDF already weighs down the tokens every chunk has. What
BM25 and the encoder see of a chunk is its contextual header and its text (ChunkRecord.indexed_text).

Hybrid ranking (SearchSettings.fusion) is by default a convex combination of the two scores, each
standardised over the searched chunks (z-scores: the scales differ, BM25 is unbounded), the dense
one weighted `dense_share`: a chunk that one ranking puts first and the other far down keeps a
score that says how far ahead it was, where reciprocal rank fusion (`fusion="rrf"`, k = 60) keeps
only the ranks. On the Ask evaluation set's dev split this raises passage recall@5 from 0.835 (RRF)
to 0.862 (bench/bench_retrieval.py).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import bm25s
import numpy as np
import Stemmer

from .store import ChunkRecord

RRF_K = 60
# words (\w+: "x", "__init__") and Python's operator symbols, longest first
TOKEN_PATTERN = r"(?u)\w+|\*\*|//|<<|>>|<=|>=|==|!=|->|:=|[-+*/%@&|^~<>]"
FUSIONS = ("zscore", "rrf")
# English function words and the words questions are made of: never "unknown" to a corpus, small
# as it may be (unknown_terms); BM25 itself keeps them (its IDF weighs them)
QUESTION_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can cannot could did do does doing done down during each either else
ever every few for from further get gets got had has have having he her here hers him his how i
if in into is it its itself just let like make makes many may me might more most much must my
need never no nor not now of off on once one only or other our out over own per please same
say says shall she should so some such than that the their them then there these they this
those through to too under until up upon us use used uses using very want was way we well were
what when where whether which while who whom whose why will with within without would yes yet
you your happen happens happened mean means meant work works difference different example
explain tell know thing things kind type
""".split())


class SearchMode(enum.IntEnum):
    HYBRID = 0
    LEXICAL = 1
    DENSE = 2


@dataclass
class Hit:
    record: ChunkRecord
    score: float                  # what the mode ranks by (the fused score for hybrid)
    lexical_score: float
    dense_score: float
    lexical_rank: int             # 1-based; 0 when the chunk has no query word
    dense_rank: int


@dataclass(frozen=True)
class SearchSettings:
    stemming: bool = True            # Snowball English stems in BM25 (query and chunks alike)
    fusion: str = "zscore"           # how hybrid combines the two: "zscore" or "rrf"
    dense_share: float = 0.7         # zscore: the dense z-score's weight (the lexical one's is 1 - it)
    lexical_weight: float = 1.0      # rrf: votes of the BM25 ranking ...
    dense_weight: float = 1.0        # ... and of the dense one

    @classmethod
    def of(cls, config) -> SearchSettings:
        """The settings a RetrievalConfig names."""
        return cls(stemming=config.bm25_stemming, fusion=config.hybrid_fusion,
                   dense_share=config.hybrid_dense_share, lexical_weight=config.rrf_lexical_weight)

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {self.fusion!r}")
        if not 0.0 <= self.dense_share <= 1.0:
            raise ValueError("dense_share must be in [0, 1]")


def _stemmer(enabled: bool):
    # a fresh one per call: PyStemmer's stemmers are not thread-safe, and the index is built in a
    # worker thread while the event loop's searches tokenize queries
    return Stemmer.Stemmer("english").stemWords if enabled else None


def lexical_tokens(texts: list[str], stemming: bool = True) -> list[list[str]]:
    return bm25s.tokenize(texts, token_pattern=TOKEN_PATTERN, stopwords=None, stemmer=_stemmer(stemming),
                          show_progress=False, return_ids=False)


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
            self.bm25.index(bm25s.tokenize([r.indexed_text for r in records], token_pattern=TOKEN_PATTERN,
                                           stopwords=None, stemmer=_stemmer(settings.stemming),
                                           show_progress=False),
                            show_progress=False)

    def __len__(self) -> int:
        return len(self.records)

    def unknown_terms(self, query: str) -> list[str]:
        """The query's words (stemmed as BM25 sees them; numbers, symbols and QUESTION_WORDS aside)
        that no chunk contains: "pandas" or "lru_cache" asked of the language reference."""
        vocabulary = self.bm25.vocab_dict if self.bm25 is not None else {}
        words = [w for w in lexical_tokens([query], stemming=False)[0]
                 if len(w) > 2 and not w.isdigit() and (w[0].isalpha() or w[0] == "_") and w not in QUESTION_WORDS]
        stems = lexical_tokens([" ".join(words)], self.settings.stemming)[0] if words else []
        return [t for t in stems if t not in vocabulary]

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
        elif self.settings.fusion == "zscore":
            fused = (self.settings.dense_share * _standardised(dense, allowed)
                     + (1.0 - self.settings.dense_share) * _standardised(lexical, allowed))
            order = [i for i in np.argsort(-fused, kind="stable") if allowed[i]][:top_k]
            ranked = [(int(i), float(fused[i])) for i in order]
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


def _standardised(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(scores - mean) / std over the allowed chunks; all zeros when they do not vary (a query
    without any lexical match leaves hybrid to the dense score)."""
    kept = scores[allowed]
    spread = float(kept.std())
    if spread == 0.0:
        return np.zeros_like(scores, dtype=np.float64)
    return (scores - float(kept.mean())) / spread
