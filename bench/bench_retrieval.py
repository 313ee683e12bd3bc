"""Retrieval benchmark on the default corpus (the Python language reference). Prints JSON.

    python bench/bench_retrieval.py [--top-k 10] [--set MESHLLM_CONTEXTUAL_HEADERS=0 ...]

Starts the whole stack (`meshllm up --ephemeral`: a throwaway Redis, the services, one worker),
ingests `pydoc_data.topics` through the Retrieval service (ingestion time, chunks per second),
and runs the Ask evaluation set's answerable questions (bench/ask_eval.json, bench/ask_eval.py)
through Search in the lexical, dense and hybrid modes. For each mode and split (dev, heldout,
all): passage-level recall@1/@5 and MRR@10 (a top-k chunk contains the question's evidence
phrase), topic-level recall@1/@5 (a top-k chunk comes from a topic holding it), and the
Search call's latency p50/p99 over gRPC. --set runs the stack with other retrieval settings
(environment variables of RetrievalConfig), to measure what each one is worth.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MODES = ("lexical", "dense", "hybrid")


def start_stack(env_overrides: dict | None = None) -> subprocess.Popen:
    """`meshllm up --ephemeral --no-corpus`, returned once it serves."""
    env = dict(os.environ, MESHLLM_LOG_FORMAT="text", MESHLLM_KV_CACHE_MB="256", **(env_overrides or {}))
    env.pop("REDIS_URL", None)
    up = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--ephemeral", "--no-corpus"], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        line = up.stdout.readline()
        if not line:
            raise SystemExit("meshllm up ended before serving")
        if "Ctrl-C stops everything." in line:
            return up


def stop_stack(up: subprocess.Popen) -> None:
    up.send_signal(signal.SIGINT)
    up.wait(60)


def ingest_corpus(stub) -> dict:
    from services.api import retrieval_pb2
    from services.retrieval.corpus import pydoc_topics
    docs = list(pydoc_topics())
    t0 = time.perf_counter()
    reply = stub.IngestStream(retrieval_pb2.Document(id=i, text=t, source=s, metadata=m) for i, t, s, m in docs)
    seconds = time.perf_counter() - t0
    return {"documents": reply.total_documents, "chunks": reply.total_chunks,
            "corpus_chars": sum(len(t) for _, t, _, _ in docs), "ingest_s": round(seconds, 1),
            "chunks_per_s": round(reply.total_chunks / seconds, 1)}


def evaluate_search(stub, questions, top_k: int) -> dict:
    """Per mode: per-split passage/topic recall, MRR@10, and Search latency."""
    from ask_eval import contains_evidence, mrr_at_k, recall_at_k

    from services.api import retrieval_pb2
    modes = {"lexical": retrieval_pb2.SEARCH_MODE_LEXICAL, "dense": retrieval_pb2.SEARCH_MODE_DENSE,
             "hybrid": retrieval_pb2.SEARCH_MODE_HYBRID}
    result = {}
    for name in MODES:
        latencies, passage, topic, splits = [], [], [], []
        for item in questions:
            t0 = time.perf_counter()
            hits = stub.Search(retrieval_pb2.SearchRequest(query=item.question, top_k=top_k, mode=modes[name])).hits
            latencies.append(time.perf_counter() - t0)
            passage.append([contains_evidence(h.text, item.evidence) for h in hits])
            topic.append([h.source in item.topics for h in hits])
            splits.append(item.split)
        figures = {}
        for split in ("dev", "heldout", "all"):
            rows = [i for i, s in enumerate(splits) if split == "all" or s == split]
            p = [passage[i] for i in rows]
            t = [topic[i] for i in rows]
            figures[split] = {"questions": len(rows),
                              "passage_recall_at_1": round(recall_at_k(p, 1), 3),
                              "passage_recall_at_5": round(recall_at_k(p, 5), 3),
                              "passage_mrr_at_10": round(mrr_at_k(p, 10), 3),
                              "topic_recall_at_1": round(recall_at_k(t, 1), 3),
                              "topic_recall_at_5": round(recall_at_k(t, 5), 3)}
        figures["search_ms_p50"] = round(1000 * float(np.median(latencies)), 1)
        figures["search_ms_p99"] = round(1000 * float(np.percentile(latencies, 99)), 1)
        figures["misses_at_5"] = [q.id for q, flags in zip(questions, passage, strict=True) if not any(flags[:5])]
        result[name] = figures
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top-k", type=int, default=10, help="hits asked for per search (MRR@10 needs 10)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting of the stack's environment, e.g. MESHLLM_BM25_STEMMING=0 (repeatable)")
    args = ap.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    import grpc
    from ask_eval import load
    from bench_engine import cpu_name

    from services.api import retrieval_pb2_grpc

    eval_set = load()
    up = start_stack(settings)
    try:
        stub = retrieval_pb2_grpc.RetrievalStub(grpc.insecure_channel("127.0.0.1:50052"))
        result = {"cpu": cpu_name(), "settings": settings, **ingest_corpus(stub),
                  "questions": len(eval_set.answerable)}
        result.update(evaluate_search(stub, eval_set.answerable, args.top_k))
        print(json.dumps(result, indent=2))
    finally:
        stop_stack(up)


if __name__ == "__main__":
    main()
