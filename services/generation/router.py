"""KV-aware routing: send a job to the worker whose prefix cache already holds its prompt's head.

Each worker publishes the chain hashes of the blocks in its prefix cache (a set per worker, kept
current from the cache's add/evict events every heartbeat) and its load (running + waiting in
its heartbeat hash; the jobs routed to it and not yet finished are its routed stream's length).
For a prompt, the router computes the same chain hashes the engine will (block_pool.chain_hash
from the model fingerprint's root), asks every live worker's set in one pipelined round trip
which of them it holds, and scores

    cost(worker) = uncached prompt blocks + routing_load_blocks x (jobs the worker runs or queues)

The cheapest worker gets the job on its routed stream when it holds at least one of the prompt's
blocks; otherwise (nobody holds any, or the one that does is busier than the saving) the job goes
to the shared stream, where the first worker with room takes it. A job routed to a worker that
dies is served by the others (jobs.JobQueue.find_orphans), exactly once like any other.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from engine.block_pool import chain_hash, root_hash

from ..common.config import QueueConfig
from ..common.jobs import SHARED, AsyncJobClient, Route
from ..common.metrics import METRICS


def prompt_block_hashes(prompt_ids: Sequence[int], fingerprint: str, block_size: int) -> list[bytes]:
    """The chain hashes of the prompt's blocks that a prefix hit may cover (never the block of the
    last token, whose logits the step computes: kv_cache_manager.max_prefix_blocks)."""
    hashes, parent = [], root_hash(fingerprint)
    for i in range((len(prompt_ids) - 1) // block_size):
        parent = chain_hash(parent, prompt_ids[i * block_size:(i + 1) * block_size])
        hashes.append(parent)
    return hashes


@dataclass(frozen=True)
class Candidate:
    worker_id: str
    cached_blocks: int          # leading prompt blocks in its prefix cache
    load: int                   # jobs it runs or has queued
    cost: float


def leading_hits(flags: Sequence) -> int:
    """How many of the prompt's blocks, from the first, a worker holds (a chain hash implies its
    whole prefix, so the first miss ends the usable overlap)."""
    n = 0
    for flag in flags:
        if not int(flag):
            break
        n += 1
    return n


def choose(candidates: list[Candidate]) -> Candidate | None:
    """The cheapest candidate if it holds part of the prompt; None: the shared stream."""
    if not candidates:
        return None
    best = min(candidates, key=lambda c: (c.cost, -c.cached_blocks, c.worker_id))
    return best if best.cached_blocks > 0 else None


class KVRouter:
    def __init__(self, jobs: AsyncJobClient, config: QueueConfig, fingerprint: str, workers_ttl_s: float = 0.5):
        self.jobs = jobs
        self.config = config
        self.fingerprint = fingerprint
        self.workers_ttl_s = workers_ttl_s
        self._workers: list[dict] = []
        self._workers_at = 0.0

    async def live_workers(self) -> list[dict]:
        """The live workers of this model (their heartbeat hashes), re-read at most every 0.5 s."""
        now = time.monotonic()
        if now - self._workers_at > self.workers_ttl_s:
            self._workers = [w for w in await self.jobs.workers() if w.get("fingerprint") == self.fingerprint]
            self._workers_at = now
        return self._workers

    async def candidates(self, prompt_ids: Sequence[int]) -> tuple[int, list[Candidate]]:
        """(the prompt's block count, every live worker scored)."""
        workers = await self.live_workers()
        if not workers:
            return 0, []
        keys = self.jobs.keys
        hashes_by_size: dict[int, list[bytes]] = {}
        pipe = self.jobs.redis.pipeline(transaction=False)
        for w in workers:
            size = int(w.get("block_size", 16))
            if size not in hashes_by_size:
                hashes_by_size[size] = prompt_block_hashes(prompt_ids, self.fingerprint, size)
            hashes = hashes_by_size[size]
            if hashes:
                pipe.smismember(keys.worker_blocks(w["worker_id"]), hashes)
            pipe.xlen(keys.route(w["worker_id"]))
        replies = iter(await pipe.execute())
        scored, most = [], 0
        for w in workers:
            hashes = hashes_by_size[int(w.get("block_size", 16))]
            cached = leading_hits(next(replies)) if hashes else 0
            routed = int(next(replies))
            load = max(int(w.get("running", 0)) + int(w.get("waiting", 0)), routed)
            most = max(most, len(hashes))
            scored.append(Candidate(w["worker_id"], cached, load,
                                    len(hashes) - cached + self.config.routing_load_blocks * load))
        return most, scored

    async def route(self, prompt_ids: Sequence[int]) -> Route:
        if not self.config.kv_routing:
            return SHARED
        blocks, candidates = await self.candidates(prompt_ids)
        best = choose(candidates)
        if best is None:
            METRICS.routed_jobs.labels("shared").inc()
            return SHARED
        METRICS.routed_jobs.labels("worker").inc()
        METRICS.routed_cached_blocks.observe(best.cached_blocks / blocks if blocks else 0.0)
        return Route(best.worker_id)
