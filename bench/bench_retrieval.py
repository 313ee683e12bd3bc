"""Retrieval benchmark on the default corpus (the Python language reference). Prints JSON.

    python bench/bench_retrieval.py [--ask 5]

Starts the whole stack (`meshllm up --ephemeral`: a throwaway Redis, the services, one worker),
ingests `pydoc_data.topics` through the Retrieval service (ingestion time, chunks per second),
runs the dev set (bench/retrieval_devset.json: 40 questions, each with the topics that answer it)
through Search in the lexical, dense and hybrid modes (recall@1 and recall@5: a hit counts when
its source is one of the question's topics), and times Ask's first answer token on the warm stack.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ask", type=int, default=5, help="questions to time Ask on")
    args = ap.parse_args()
    import grpc

    from services.api import retrieval_pb2, retrieval_pb2_grpc
    from services.retrieval.corpus import pydoc_topics

    devset = json.loads((ROOT / "bench" / "retrieval_devset.json").read_text())["questions"]
    env = dict(os.environ, MESHLLM_LOG_FORMAT="text", MESHLLM_KV_CACHE_MB="256")
    env.pop("REDIS_URL", None)
    up = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--ephemeral", "--no-corpus"], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        while "Ctrl-C stops everything." not in (up.stdout.readline() or "Ctrl-C stops everything."):
            pass
        stub = retrieval_pb2_grpc.RetrievalStub(grpc.insecure_channel("127.0.0.1:50052"))
        docs = list(pydoc_topics())
        t0 = time.perf_counter()
        reply = stub.IngestStream(retrieval_pb2.Document(id=i, text=t, source=s, metadata=m) for i, t, s, m in docs)
        ingest_s = time.perf_counter() - t0
        result = {"documents": reply.total_documents, "chunks": reply.total_chunks,
                  "corpus_chars": sum(len(t) for _, t, _, _ in docs), "ingest_s": round(ingest_s, 1),
                  "chunks_per_s": round(reply.total_chunks / ingest_s, 1), "questions": len(devset)}
        for name, mode in (("lexical", retrieval_pb2.SEARCH_MODE_LEXICAL), ("dense", retrieval_pb2.SEARCH_MODE_DENSE),
                           ("hybrid", retrieval_pb2.SEARCH_MODE_HYBRID)):
            at1 = at5 = 0
            latencies = []
            for item in devset:
                t0 = time.perf_counter()
                hits = stub.Search(retrieval_pb2.SearchRequest(query=item["q"], top_k=5, mode=mode)).hits
                latencies.append(time.perf_counter() - t0)
                sources = [h.source for h in hits]
                at1 += bool(sources[:1]) and sources[0] in item["topics"]
                at5 += any(s in item["topics"] for s in sources)
            result[f"{name}_recall_at_1"] = round(at1 / len(devset), 3)
            result[f"{name}_recall_at_5"] = round(at5 / len(devset), 3)
            result[f"{name}_search_ms_p50"] = round(1000 * float(np.median(latencies)), 1)
        ttfts = []
        for item in devset[:args.ask]:
            t0 = time.perf_counter()
            for message in stub.Ask(retrieval_pb2.AskRequest(question=item["q"], max_new_tokens=32)):
                if message.text:
                    ttfts.append(time.perf_counter() - t0)
                    break
        result["ask_ttft_s_p50"] = round(float(np.median(ttfts)), 2)
        result["ask_ttft_s_max"] = round(float(np.max(ttfts)), 2)
        print(json.dumps(result, indent=2))
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)


if __name__ == "__main__":
    main()
