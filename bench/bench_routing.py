"""KV-aware routing against the any-worker queue, on a real mesh. Prints JSON.

    python bench/bench_routing.py [--workers 2 4] [--clients 64] [--requests 6] [--kv-cache-mb 320] [--rate R]

For each worker count and each mode (routing on, off: MESHLLM_KV_ROUTING), a fresh redis-server,
Generation front-end and N workers (one kernel thread each, shared KV through Redis on, as in
production). 8 system prompts of ~1000 tokens; first each is sent once (warm-up: the fleet has
computed every prefix, Redis holds their blocks); then `clients` concurrent clients each send
`requests` requests (a random system prompt + its own question, 16 greedy tokens) by streaming
gRPC. Reports TTFT p50/p99 (request sent -> first token received), aggregate generated tok/s
(tokens / wall time of the measured phase) and the mean share of prompt tokens served from a
prefix cache, per mode, and the ratios.

--rate R (requests/s) sends the same requests open-loop instead, as vLLM's benchmark_serving does:
Poisson arrivals at R per second, at most `clients` in flight; a request's TTFT then counts from
its scheduled arrival, so time spent waiting for a free client (the fleet falling behind the
offered load) is in it. Closed-loop (the default) measures the saturated fleet, where every
client's TTFT is mostly the queue ahead of it. Every client's first request leaves at the same
instant: with 2 requests a client, half the samples were that start-up burst (each worker
prefilling 16-32 questions at once, whatever the routing), so the default is 6, and the TTFT of
the requests after each client's first (the fleet past its start) is reported beside all of them.

Each worker's KV pool (--kv-cache-mb) holds about 5 of the 8 prefixes (SmolLM2-135M keeps 46 KB
per token): with routing each worker only needs its own share of them, without it every worker
cycles through all 8 (evicting, then importing from Redis or recomputing).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import cpu_name  # noqa: E402

WORDS = ("river city market grain salt cloth harbor bridge tower council winter harvest ledger merchant "
         "caravan lantern archive garden temple scholar map compass voyage mountain valley forest meadow "
         "treaty festival workshop engine signal letter railway station observatory library museum").split()


def system_prompts(n: int, words: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [f"You are assistant number {k}. Background notes follow.\n" +
            " ".join(rng.choice(WORDS) for _ in range(words)) for k in range(n)]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def arrivals(n: int, rate: float, seed: int) -> list[float]:
    """n Poisson arrival times (seconds from the start) at `rate` per second."""
    rng = random.Random(seed)
    t, times = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        times.append(t)
    return times


def run_mode(workers: int, routing: bool, prompts: list[str], clients: int, requests: int, kv_cache_mb: int,
             max_new: int, rate: float = 0.0) -> dict:
    from harness.faults import greedy_request
    from harness.mesh import Mesh, channel
    from services.api import generation_pb2_grpc
    from services.common.redis_server import RedisServer

    server = RedisServer(maxmemory="4gb").start()
    mesh = Mesh(server.url, f"br{uuid.uuid4().hex[:6]}:", env_extra={
        "MESHLLM_KV_CACHE_MB": kv_cache_mb, "MESHLLM_THREADS": 1, "MESHLLM_KV_ROUTING": str(routing).lower(),
        "MESHLLM_MAX_QUEUE_LEN": 1024, "MESHLLM_MAX_NUM_SEQS": 64,
        "MESHLLM_HEARTBEAT_MS": 1000, "MESHLLM_CLAIM_IDLE_MS": 5000})     # production's, not the tests' short ones
    try:
        generation = mesh.service("generation")
        for _ in range(workers):
            mesh.worker(register_timeout_s=900)             # the first run may compile the kernels
        with channel(generation) as ch:
            stub = generation_pb2_grpc.GenerationStub(ch)
            for p in prompts:                                   # warm-up: every prefix computed once
                stub.Generate(greedy_request(p + "\nQuestion: warm up.", 1), timeout=600)
        time.sleep(1.0)                                         # heartbeats publish the caches
        ttfts: list[float] = []
        later_ttfts: list[float] = []                           # each client's requests after its first
        cached: list[float] = []
        tokens = [0]
        errors: list[str] = []
        lock = threading.Lock()

        schedule = arrivals(clients * requests, rate, seed=5) if rate else None
        next_request = iter(range(clients * requests))
        t0 = time.perf_counter()

        def client(c: int) -> None:
            rng = random.Random(1000 + c)
            with channel(generation) as ch:
                stub = generation_pb2_grpc.GenerationStub(ch)
                for r in range(requests) if schedule is None else iter(lambda: next(next_request, None), None):
                    prompt = rng.choice(prompts) + f"\nQuestion {c}.{r}: what does note {rng.randint(1, 99)} say?"
                    sent = time.perf_counter()
                    if schedule is not None:                     # open loop: from the request's arrival
                        sent = t0 + schedule[r]
                        time.sleep(max(0.0, sent - time.perf_counter()))
                    first = None
                    n, share = 0, 0.0
                    try:
                        for reply in stub.GenerateStream(greedy_request(prompt, max_new), timeout=900):
                            if reply.token_ids and first is None:
                                first = time.perf_counter() - sent
                            n += len(reply.token_ids)
                            if reply.usage.prompt_tokens:
                                share = reply.usage.cached_prompt_tokens / reply.usage.prompt_tokens
                    except Exception as e:                       # noqa: BLE001 - counted and reported
                        with lock:
                            errors.append(type(e).__name__)
                        continue
                    with lock:
                        ttfts.append(first)
                        if r:
                            later_ttfts.append(first)
                        cached.append(share)
                        tokens[0] += n

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        return {"workers": workers, "routing": routing, "rate": rate or None, "requests": len(ttfts), "errors": errors,
                "ttft_p50_s": round(percentile(ttfts, 0.5), 3), "ttft_p99_s": round(percentile(ttfts, 0.99), 3),
                "ttft_mean_s": round(statistics.mean(ttfts), 3),
                "ttft_after_first_p50_s": round(percentile(later_ttfts, 0.5), 3) if later_ttfts else None,
                "ttft_after_first_p99_s": round(percentile(later_ttfts, 0.99), 3) if later_ttfts else None,
                "tokens_per_s": round(tokens[0] / wall, 1),
                "wall_s": round(wall, 1), "cached_prompt_share": round(statistics.mean(cached), 3)}
    finally:
        mesh.stop()
        server.stop()


def _ratio(pair: dict, key: str) -> float | None:
    """any-worker / routed for one figure (None where a mode has none)."""
    return round(pair[False][key] / pair[True][key], 2) if pair[False][key] and pair[True][key] else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=6, help="requests per client")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-words", type=int, default=900, help="~1.1 tokens per word with SmolLM2")
    ap.add_argument("--kv-cache-mb", type=int, default=320)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--rate", type=float, default=0.0, help="open loop: Poisson arrivals per second (0: closed loop)")
    args = ap.parse_args()
    import os

    from engine.llm import LLM
    from engine.model_registry import SMOLLM2
    os.environ.setdefault("MESHLLM_MODEL", SMOLLM2)
    prompts = system_prompts(args.prompts, args.prompt_words)
    tokenizer = LLM.load(os.environ["MESHLLM_MODEL"]).tokenizer
    lengths = [len(tokenizer.encode(p)) for p in prompts]
    results = []
    for workers in args.workers:
        pair = {}
        for routing in (False, True):
            pair[routing] = run_mode(workers, routing, prompts, args.clients, args.requests, args.kv_cache_mb,
                                     args.max_new_tokens, args.rate)
            print(json.dumps(pair[routing]), file=sys.stderr)
        results.append({"workers": workers, "any_worker": pair[False], "routed": pair[True],
                        "ttft_p50_ratio": _ratio(pair, "ttft_p50_s"), "ttft_p99_ratio": _ratio(pair, "ttft_p99_s"),
                        "ttft_after_first_p50_ratio": _ratio(pair, "ttft_after_first_p50_s"),
                        "throughput_ratio": round(pair[True]["tokens_per_s"] / pair[False]["tokens_per_s"], 2)})
    print(json.dumps({"bench": "routing", "cpu": cpu_name(),
                      "model": os.environ["MESHLLM_MODEL"], "system_prompt_tokens": lengths,
                      "clients": args.clients, "requests_per_client": args.requests, "rate": args.rate or None,
                      "kv_cache_mb_per_worker": args.kv_cache_mb, "results": results}, indent=1))


if __name__ == "__main__":
    main()
