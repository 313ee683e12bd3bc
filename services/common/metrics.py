"""Prometheus metrics of a service process, served over HTTP on its metrics port."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("meshllm_requests_total", "RPCs by method and status code",
                                ["service", "method", "code"], registry=r)
        self.latency = Histogram("meshllm_request_seconds", "RPC duration", ["service", "method"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("meshllm_time_to_first_token_seconds", "request to first token", buckets=_LATENCY_BUCKETS,
                              registry=r)
        self.itl = Histogram("meshllm_inter_token_latency_seconds", "time between streamed tokens",
                             buckets=_TOKEN_BUCKETS, registry=r)
        self.prompt_tokens = Counter("meshllm_prompt_tokens_total", "prompt tokens of accepted requests", registry=r)
        self.generated_tokens = Counter("meshllm_generated_tokens_total", "tokens generated", registry=r)
        self.cached_prompt_tokens = Counter("meshllm_cached_prompt_tokens_total", "prompt tokens served from the "
                                            "prefix cache", registry=r)
        self.queue_length = Gauge("meshllm_queue_length", "generation jobs queued or running", registry=r)
        self.running = Gauge("meshllm_running_sequences", "sequences in the workers' batches", registry=r)
        self.waiting = Gauge("meshllm_waiting_sequences", "sequences admitted by workers, not yet running",
                             registry=r)
        self.workers = Gauge("meshllm_workers", "workers alive", registry=r)
        self.kv_usage = Gauge("meshllm_kv_cache_usage_ratio", "used share of the workers' KV blocks", registry=r)
        self.prefix_hit_rate = Gauge("meshllm_prefix_cache_hit_rate", "share of prompt tokens served from the "
                                     "prefix cache (workers' mean)", registry=r)
        self.routed_jobs = Counter("meshllm_routed_jobs_total", "generation jobs by where KV-aware routing sent "
                                   "them: a worker holding their prefix, or the shared stream", ["target"], registry=r)
        self.routed_cached_blocks = Histogram("meshllm_routed_cached_ratio", "of a routed job's prompt blocks, the "
                                              "share its worker's prefix cache held", buckets=(0.1, 0.25, 0.5, 0.75,
                                                                                               0.9, 0.99, 1.0),
                                              registry=r)
        self.redis_up = Gauge("meshllm_redis_up", "1 while Redis answers", registry=r)
        self.draft_tokens = Gauge("meshllm_speculative_draft_tokens", "prompt-lookup draft tokens verified "
                                  "(live workers' totals)", registry=r)
        self.accepted_draft_tokens = Gauge("meshllm_speculative_accepted_tokens", "of those, accepted "
                                           "(live workers' totals)", registry=r)
        self.verify_steps = Gauge("meshllm_speculative_verify_steps", "sequence steps that verified drafts "
                                  "(live workers' totals)", registry=r)
        self.shared_kv_blocks = Gauge("meshllm_shared_kv_blocks", "KV blocks through the shared (Redis) cache: "
                                      "imported from it, rejected on import, exported to it (live workers' "
                                      "totals)", ["event"], registry=r)
        self.retrieval_seconds = Histogram("meshllm_retrieval_seconds", "Retrieval's search step (query "
                                           "embedding and ranking), for Search and for Ask before it generates",
                                           ["rpc", "mode"], buckets=_LATENCY_BUCKETS, registry=r)
        self.expert_tokens = Gauge("meshllm_moe_expert_tokens", "MoE models: tokens routed to each expert, "
                                   "summed over layers (live workers' totals)", ["expert"], registry=r)
        self.expert_load_imbalance = Gauge("meshllm_moe_expert_load_imbalance", "MoE models: the busiest "
                                           "expert's tokens over the mean expert's (1 = balanced)", registry=r)

    def set_expert_load(self, workers: list[dict]) -> None:
        """The expert gauges from the workers' heartbeats ("expert_tokens": "n0,n1,..."); workers of a
        dense model, or of a model with another expert count than the first, are left out."""
        totals: list[int] = []
        for worker in workers:
            raw = worker.get("expert_tokens")
            if not raw:
                continue
            counts = [int(n) for n in str(raw).split(",")]
            if not totals:
                totals = counts
            elif len(counts) == len(totals):
                totals = [a + b for a, b in zip(totals, counts, strict=True)]
        for expert, n in enumerate(totals):
            self.expert_tokens.labels(str(expert)).set(n)
        mean = sum(totals) / len(totals) if totals else 0
        self.expert_load_imbalance.set(max(totals) / mean if mean else 0.0)

    def observe_request(self, service: str, method: str, code, seconds: float) -> None:
        self.requests.labels(service, method, getattr(code, "name", str(code))).inc()
        self.latency.labels(service, method).observe(seconds)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        if port:
            start_http_server(port, addr=host, registry=self.registry)


METRICS = Metrics()
