"""Load test: N concurrent clients streaming a mix of Generate, Ask and Tokenize calls. Prints JSON.

    python bench/load.py [--clients 32] [--duration 300] [--workers 1]
    python bench/load.py --tokenizer HOST:PORT --retrieval HOST:PORT --generation HOST:PORT ...

Without addresses it starts its own stack (`meshllm up --ephemeral --no-corpus`: a throwaway Redis,
the three services and the workers on their default ports) and ingests the pydoc topics the Ask
questions are about. Loopback only; every loop is bounded by --duration.

Reports: calls and status codes by method (INCOMPLETE: a stream that ended without its final
message; MISCOUNTED: usage that disagrees with the tokens delivered), calls that outlived their
deadline, p50/p99 time to first token and inter-token latency, generated tokens per second, jobs
left in the queue, and the resident memory of every process of the stack at the start and the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.faults import outstanding_jobs  # noqa: E402
from harness.load import LoadClients, ingest_ask_corpus  # noqa: E402


def rss_mb(processes) -> dict:
    out = {}
    for p in processes:
        try:
            name = "redis-server" if "redis-server" in p.name() else " ".join(p.cmdline()[-2:])
            out[f"{p.pid} {name}"] = round(p.memory_info().rss / 2**20, 1)
        except Exception:                      # noqa: BLE001 - a process that ended
            out[f"{p.pid}"] = None
    return out


def start_stack(workers: int) -> subprocess.Popen:
    env = dict(os.environ, MESHLLM_LOG_FORMAT="text", MESHLLM_KV_CACHE_MB="512")
    env.pop("REDIS_URL", None)
    up = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--ephemeral", "--no-corpus",
                           "--workers", str(workers)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    for line in up.stdout:
        if "Ctrl-C stops everything." in line:
            return up
    raise SystemExit(f"meshllm up exited with {up.wait()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=300, help="seconds of load")
    ap.add_argument("--workers", type=int, default=1, help="workers of the stack this starts")
    ap.add_argument("--generate-weight", type=float, default=0.6)
    ap.add_argument("--ask-weight", type=float, default=0.2)
    ap.add_argument("--tokenize-weight", type=float, default=0.2)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--retrieval", default=None)
    ap.add_argument("--generation", default=None)
    ap.add_argument("--api-key", default=os.environ.get("MESHLLM_API_KEY"))
    args = ap.parse_args()
    import psutil

    up = None
    addresses = {"tokenizer": args.tokenizer, "retrieval": args.retrieval, "generation": args.generation}
    if not all(addresses.values()):
        up = start_stack(args.workers)
        addresses = {"tokenizer": "127.0.0.1:50051", "retrieval": "127.0.0.1:50052", "generation": "127.0.0.1:50053"}
        ingest_ask_corpus(addresses["retrieval"], args.api_key)
    try:
        processes = psutil.Process(up.pid).children(recursive=True) if up else []
        memory_start = rss_mb(processes)
        load = LoadClients(addresses, args.clients, args.duration, api_key=args.api_key,
                           weights={"generate": args.generate_weight, "ask": args.ask_weight,
                                    "tokenize": args.tokenize_weight})
        asyncio.run(load.run())
        result = {"clients": args.clients, "duration_s": round(load.elapsed_s, 1), **load.stats.summary(load.elapsed_s),
                  "rss_mb_start": memory_start, "rss_mb_end": rss_mb(processes),
                  "processes_started": len(processes),
                  "processes_alive_at_end": sum(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                                for p in processes)}
        result["jobs_outstanding_at_end"] = outstanding_jobs(addresses["generation"], args.api_key)
        print(json.dumps(result, indent=2))
    finally:
        if up:
            up.send_signal(signal.SIGINT)
            up.wait(60)


if __name__ == "__main__":
    main()
