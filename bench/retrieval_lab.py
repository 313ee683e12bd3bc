"""Re-ranking ideas for Ask's hybrid search, in one process, in seconds. Prints JSON.

    python bench/retrieval_lab.py [--cache PATH]

The default corpus is chunked and embedded as Retrieval's ingest does (ask_prompt_lab.corpus_records,
the embeddings cached as .npy), the Ask evaluation set's questions embedded once, and each variant
ranks every chunk for every answerable question: passage-level recall@1/@5/@10 (a chunk holding
the evidence phrase) on the dev and held-out splits. The variants need no model call, so each
fits Search's 50 ms budget:

- hybrid: the service's z-score fusion (SearchIndex.search), the baseline;
- dense_share: other weights of the dense z-score;
- neighbour_max / neighbour_mean: a chunk's score plus beta times its neighbours' (the chunks
  before and after it in its document): the evidence often sits next to the chunk that matched;
- document_max: plus gamma times the best score in the chunk's document;
- dense_prf: the query vector moved towards the mean of the top m chunks (Rocchio), dense rescored;
- bm25_k1_b: BM25 with other k1 / b;
- text_bm25: plus w times BM25 over the chunk text without its contextual header.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=None, help="the chunks' embeddings (.npy; default as ask_prompt_lab)")
    args = ap.parse_args()

    import bm25s
    from ask_eval import contains_evidence, load
    from ask_prompt_lab import corpus_records

    from engine.encoder import SentenceEncoder
    from services.common.config import RetrievalConfig
    from services.retrieval.index import (
        TOKEN_PATTERN,
        SearchIndex,
        SearchSettings,
        _standardised,
        _stemmer,
        lexical_tokens,
    )

    config = RetrievalConfig()
    encoder = SentenceEncoder.load()
    cache = args.cache or Path(f"/tmp/meshllm_ask_lab_{config.chunk_tokens}_{config.overlap_tokens}_"
                               f"{int(config.contextual_headers)}.npy")
    records = corpus_records(encoder, config, cache)
    index = SearchIndex(1, records, encoder.dimensions, SearchSettings.of(config))
    eval_set = load()
    splits = {name: eval_set.split(name)[0] for name in ("dev", "heldout")}
    questions = [q for items in splits.values() for q in items]
    vectors = encoder.embed([q.question for q in questions])
    n = len(records)
    everywhere = np.ones(n, bool)
    embeddings = index.embeddings
    relevant = [np.array([contains_evidence(r.text, q.evidence) for r in records]) for q in questions]
    position = {(r.doc_id, r.index): i for i, r in enumerate(records)}
    before = np.array([position.get((r.doc_id, r.index - 1), -1) for r in records])
    after = np.array([position.get((r.doc_id, r.index + 1), -1) for r in records])
    _, document = np.unique([r.doc_id for r in records], return_inverse=True)

    def bm25(texts, k1=1.5, b=0.75):
        model = bm25s.BM25(k1=k1, b=b)
        model.index(bm25s.tokenize(texts, token_pattern=TOKEN_PATTERN, stopwords=None, stemmer=_stemmer(True),
                                   show_progress=False), show_progress=False)
        scores = []
        for q in questions:
            words = lexical_tokens([q.question], True)[0]
            scores.append(np.asarray(model.get_scores(words), np.float64) if words else np.zeros(n))
        return scores

    dense = [embeddings @ v for v in vectors]
    lexical = bm25([r.indexed_text for r in records])
    z_dense = [_standardised(d, everywhere) for d in dense]
    z_lexical = [_standardised(s, everywhere) for s in lexical]
    share = config.hybrid_dense_share

    def hybrid(i, dense_share=share):
        return dense_share * z_dense[i] + (1 - dense_share) * z_lexical[i]

    def neighbours(i, beta, how):
        f = hybrid(i)
        prev_f, next_f = np.where(before >= 0, f[before], np.nan), np.where(after >= 0, f[after], np.nan)
        pair = np.stack([prev_f, next_f])
        boost = np.nanmax(pair, axis=0) if how == "max" else np.nanmean(pair, axis=0)
        return f + beta * np.nan_to_num(boost, nan=0.0)

    def document_max(i, gamma):
        f = hybrid(i)
        best = np.full(document.max() + 1, -np.inf)
        np.maximum.at(best, document, f)
        return f + gamma * best[document]

    def dense_prf(i, alpha, m):
        top = np.argsort(-hybrid(i))[:m]
        moved = vectors[i] + alpha * embeddings[top].mean(axis=0)
        moved /= np.linalg.norm(moved)
        return share * _standardised(embeddings @ moved, everywhere) + (1 - share) * z_lexical[i]

    variants = {"hybrid": hybrid}
    for s in (0.5, 0.6, 0.8):
        variants[f"dense_share {s}"] = lambda i, s=s: hybrid(i, s)
    for beta in (0.1, 0.2, 0.3, 0.5):
        variants[f"neighbour_max {beta}"] = lambda i, beta=beta: neighbours(i, beta, "max")
    for beta in (0.1, 0.2, 0.3):
        variants[f"neighbour_mean {beta}"] = lambda i, beta=beta: neighbours(i, beta, "mean")
    for gamma in (0.1, 0.2, 0.4):
        variants[f"document_max {gamma}"] = lambda i, gamma=gamma: document_max(i, gamma)
    for alpha, m in ((0.3, 3), (0.5, 3), (0.5, 5), (1.0, 3)):
        variants[f"dense_prf {alpha} top {m}"] = lambda i, alpha=alpha, m=m: dense_prf(i, alpha, m)
    for k1, b in ((1.2, 0.75), (0.9, 0.4), (1.5, 0.3), (2.0, 0.75), (1.2, 0.9)):
        z = [_standardised(s, everywhere) for s in bm25([r.indexed_text for r in records], k1, b)]
        variants[f"bm25_k1_b {k1} {b}"] = lambda i, z=z: share * z_dense[i] + (1 - share) * z[i]
    z_text = [_standardised(s, everywhere) for s in bm25([r.text for r in records])]
    for w in (0.1, 0.2, 0.3):
        variants[f"text_bm25 {w}"] = lambda i, w=w: hybrid(i) + w * z_text[i]

    result = {"bench": "retrieval_lab", "chunks": n, "questions": {k: len(v) for k, v in splits.items()},
              "recall_at_1_5_10": {}}
    for name, score in variants.items():
        row, first = {}, 0
        for split, items in splits.items():
            flags = [relevant[i][np.argsort(-score(i), kind="stable")[:10]] for i in range(first, first + len(items))]
            row[split] = [round(sum(f[:k].any() for f in flags) / len(flags), 3) for k in (1, 5, 10)]
            first += len(items)
        result["recall_at_1_5_10"][name] = row
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
