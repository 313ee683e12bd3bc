"""A generation worker: takes jobs from Redis, runs them in its engine's continuous batch, streams
their tokens back, and shares the prefix KV blocks it computes.

Loop: renew this worker's jobs and claim dead workers' (every heartbeat) -> take the jobs routed
to it, and shared ones while the next step has token budget and KV blocks for them -> apply
cancellations -> one engine step -> write each job's new events (fenced by ownership) -> end the
jobs that finished (ack and delete their queue entry).
A keepalive thread renews the heartbeat key and the jobs' entries during long engine steps.

A worker that loses Redis keeps its engine state and the events it could not write, retries with
back-off, and does not step (so nothing is generated that cannot be delivered).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

from engine.block_store import store_namespace
from engine.llm import LLM
from engine.llm_engine import EngineConfig, LLMEngine, RequestOutput

from ..common.config import QueueConfig, RedisConfig, WorkerConfig
from ..common.jobs import JobEntry, JobQueue, JobSpec, OutputEvent
from ..common.keys import Keys
from ..common.kv_store import RedisBlockStore
from ..common.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE
from ..common.redis_client import connect, replicated
from ..common.tracing import JobSpan, job_span

log = logging.getLogger("meshllm.worker")

REQUEST_ERRORS = (ValueError, TypeError)       # a job spec the engine refuses: the client's fault


@dataclass
class RunningJob:
    entry: JobEntry               # its entry in the queue (the shared stream or a routed one)
    leased: bool = False          # its reader renews a lease (a lapsed one cancels the job)
    span: JobSpan | None = None   # its trace span (None: tracing is off)


Delivery = tuple[str, list[OutputEvent], bool]          # (job id, events to append, job finished)

# A main loop without a turn for this long is wedged: the keepalive stops vouching for it, so that
# its jobs are taken over (a real engine step takes seconds at most: a 2,048-token prefill on one core).
STALLED_AFTER_S = 60.0


class Keepalive:
    """Renews the worker's heartbeat key and its jobs' queue entries every heartbeat from a thread
    of its own. The main loop renews them too, but only between engine steps: one long step (a
    long prefill, many sequences on one core) would otherwise let the key lapse and the jobs go
    idle past claim_idle_ms, and other workers would take over jobs that are running (and the
    owner then drop them: work done twice, under exactly the load where it hurts most)."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.entries: list[JobEntry] = []            # the main loop's running jobs, replaced each turn
        self.last_turn = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keepalive", daemon=True)

    def turn(self, entries: list[JobEntry]) -> None:
        """The main loop's report: it is alive, and these are its jobs."""
        self.entries = entries
        self.last_turn = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        worker = self.worker
        period = worker.queue_config.heartbeat_ms / 1000
        while not self._stop.wait(period):
            if time.monotonic() - self.last_turn > STALLED_AFTER_S:
                continue
            try:
                worker.queue.renew(worker.worker_id, self.entries)
                worker.redis.pexpire(worker.keys.worker(worker.worker_id), 3 * worker.queue_config.heartbeat_ms)
            except REDIS_UNAVAILABLE:                # the main loop reports and rides out outages
                pass


def _delivery(output: RequestOutput) -> Delivery:
    return output.request_id, [OutputEvent.from_token_event(e, e.index) for e in output.events], output.finished


class Worker:
    def __init__(self, llm: LLM, redis_config: RedisConfig, queue_config: QueueConfig, config: WorkerConfig,
                 worker_id: str | None = None):
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.config = config
        self.queue_config = queue_config
        self.redis = connect(redis_config.redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.keys = Keys(redis_config.key_prefix)
        self.queue = JobQueue(self.redis, self.keys, queue_config, replicated=replicated(redis_config.redis_url))
        store = RedisBlockStore(self.redis, self.keys, store_namespace(llm.model.fingerprint, config.kv_cache_dtype),
                                config.kv_block_ttl_s) \
            if config.share_kv else None
        engine_config = EngineConfig(block_size=config.block_size, kv_cache_mb=config.kv_cache_mb,
                                     max_num_batched_tokens=config.max_num_batched_tokens,
                                     max_num_seqs=config.max_num_seqs, max_context=config.max_context or None,
                                     step_target_s=config.step_target_s, kv_cache_dtype=config.kv_cache_dtype)
        self.engine = LLMEngine(llm.model, llm.tokenizer, engine_config, store)
        self.engine.grammars.warm()                  # structured output's tokenizer, built before any job
        self.jobs: dict[str, RunningJob] = {}
        self._undelivered: list[Delivery] = []
        self._stopping = threading.Event()
        self._next_heartbeat = 0.0
        self._blocks_synced = False                  # the published block set matches the cache
        self.keepalive = Keepalive(self)

    # ------------------------------------------------------------------ lifecycle

    def run(self, drain_timeout_s: float = 10.0) -> None:
        """Serve until stop(); then finish running jobs for up to drain_timeout_s. Jobs left
        unfinished stay pending in Redis and another worker takes them over."""
        self._connect()
        log.info("worker %s serving (model %s, %d KV blocks)", self.worker_id, self.engine.model.config.name,
                 self.engine.pool.num_blocks)
        self.keepalive.start()
        try:
            while not self._stopping.is_set():
                self._guarded(self.run_once)
            deadline = time.monotonic() + drain_timeout_s
            while self.engine.has_work() and time.monotonic() < deadline:
                self._guarded(lambda: self.run_once(take_new=False))
        finally:
            self.keepalive.stop()                    # what is left unfinished can be taken over now
        self.engine.close()
        log.info("worker %s stopped with %d jobs unfinished", self.worker_id, len(self.jobs))

    def stop(self) -> None:
        self._stopping.set()

    def _connect(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                self.queue.ensure_group(self.worker_id)
                return
            except REDIS_UNAVAILABLE as e:
                log.warning("Redis unreachable (%s); retrying in %.1fs", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _guarded(self, step) -> None:
        try:
            step()
        except REDIS_UNAVAILABLE as e:
            log.warning("Redis unreachable (%s); holding %d jobs", e, len(self.jobs))
            time.sleep(0.5)
            self._next_heartbeat = 0.0
            self._blocks_synced = False
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # Redis came back without its data (no persistence), or this worker's routed stream was
            # removed while its heartbeat had lapsed: the streams and groups are made anew
            log.warning("a job stream's consumer group is gone; recreating it")
            self._blocks_synced = False
            self._connect()

    # ------------------------------------------------------------------ one turn

    def run_once(self, take_new: bool = True) -> None:
        if self._undelivered:
            self._deliver(self._undelivered)
            if self._undelivered:
                return
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = now + self.queue_config.heartbeat_ms / 1000
            if take_new:
                for entry, spec in self.queue.claim_stale(self.worker_id, self._room()):
                    self._start(entry, spec, claimed=True)
        if take_new:
            self._take_new_jobs()
        elif not self.engine.has_work():
            time.sleep(0.05)
        self._apply_cancellations()
        self.keepalive.turn([job.entry for job in self.jobs.values()])
        try:
            deliveries = [_delivery(o) for o in self.engine.step()]
        except Exception as e:                                # an engine bug: answer, never go silent
            log.exception("engine step failed; failing its %d jobs", len(self.jobs))
            deliveries = self._fail_all(f"the worker failed: {type(e).__name__}: {e}")
        if deliveries:
            self._deliver(deliveries)

    def _take_new_jobs(self) -> None:
        """The jobs routed to this worker, up to its room; then the shared stream's, one at a
        time, while the next step has token budget and KV blocks left for their uncached prompts
        (engine.intake_room): a job this worker could only queue stays in Redis for a worker that
        can start it now. Idle with nothing to take, waits briefly for the first job."""
        room = self._room()
        taken = self.queue.read_routed(self.worker_id, room)
        for entry, spec in taken:
            self._start(entry, spec, claimed=False)
        room -= len(taken)
        tokens, blocks = self.engine.intake_room() if room > 0 else (0, 0)
        while room > 0 and tokens > 0 and blocks > 0:
            shared = self.queue.read_shared(self.worker_id, 1)
            if not shared:
                break
            (entry, spec), = shared
            if self._start(entry, spec, claimed=False):
                need_tokens, need_blocks = self.engine.admission_cost(spec.job_id)
                tokens -= need_tokens
                blocks -= need_blocks
            room -= 1
            taken += shared
        if not taken and not self.engine.has_work():
            for entry, spec in self.queue.wait_new(self.worker_id, block_ms=100):
                self._start(entry, spec, claimed=False)

    def _room(self) -> int:
        """How many new jobs to take now. None while the engine still has waiting sequences: what
        it could not admit last step (token budget, KV pool, a preemption) tells that it is full,
        and a job taken now would wait here while another worker could start it at once. So
        unstarted jobs stay in Redis, where any worker with room takes them (the shared stream)
        and the router counts them (a routed stream)."""
        if self.engine.num_waiting:
            return 0
        return max(0, self.engine.config.max_num_seqs - self.engine.num_running)

    def _heartbeat(self) -> None:
        self.queue.renew(self.worker_id, [job.entry for job in self.jobs.values()])
        self.queue.find_orphans(self.worker_id)
        stats = self.engine.stats
        info = {"model": self.engine.model.config.name, "fingerprint": self.engine.model.fingerprint,
                "running": self.engine.num_running, "waiting": self.engine.num_waiting,
                "kv_blocks_free": self.engine.pool.num_free_blocks, "kv_blocks": self.engine.pool.num_blocks,
                "block_size": self.engine.pool.block_size, "max_num_seqs": self.engine.config.max_num_seqs,
                "kv_cache_dtype": self.engine.config.kv_cache_dtype,
                "prefix_hit_rate": round(self.engine.kv.stats.hit_rate, 4),
                "draft_tokens": stats.draft_tokens, "accepted_draft_tokens": stats.accepted_draft_tokens,
                "verify_steps": stats.verify_steps, "kv_imported": stats.remote_blocks_imported,
                "kv_rejected": stats.remote_blocks_rejected, "kv_exported": stats.blocks_exported}
        if stats.expert_tokens:                              # an MoE model: its router statistics
            info["expert_tokens"] = ",".join(map(str, stats.expert_tokens))
        key = self.keys.worker(self.worker_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=info)
        pipe.pexpire(key, 3 * self.queue_config.heartbeat_ms)
        pipe.execute()
        self._publish_blocks()
        if self.config.heartbeat_file:                       # reached only while Redis answers
            Path(self.config.heartbeat_file).touch()

    def _publish_blocks(self) -> None:
        """The prefix cache's changes since the last heartbeat into this worker's block set, which
        the front-end's router reads; the whole cache after a start or a Redis outage."""
        pool = self.engine.pool
        if self._blocks_synced:
            added, removed = pool.changes.take()
            self.queue.publish_blocks(self.worker_id, added, removed, full=False)
        else:
            pool.changes.take()
            self.queue.publish_blocks(self.worker_id, pool.cached_hashes(), [], full=True)
            self._blocks_synced = True

    def _start(self, entry: JobEntry, spec: JobSpec | None, claimed: bool) -> bool:
        """Take the job and add it to the engine; False when it is not added (gone, already
        finished, or refused with an error written to its output)."""
        if spec is None:                                     # unreadable or deleted entry
            self.queue.finish(entry, "-")
            return False
        job_id = spec.job_id
        if job_id in self.jobs:
            # Already running here: this worker claimed its own entry back (a Redis failover
            # lapsed its renewals past claim_idle_ms), or the new primary, missing the group's
            # last read, delivered the entry again. It keeps running; adding it twice would fail it.
            self.jobs[job_id].entry = entry
            return False
        self.queue.take_ownership(job_id, self.worker_id)
        resumed, final = self.queue.already_streamed(job_id) if claimed else ([], False)
        if final:
            self.queue.finish(entry, job_id)
            return False
        if claimed:
            log.info("took over job %s after %d streamed tokens", job_id, len(resumed))
        span = job_span(spec, len(resumed))
        try:
            self.engine.add_request(job_id, spec.prompt_ids, spec.options(), resumed_output=resumed)
        except REQUEST_ERRORS as e:
            failure = OutputEvent.failure(len(resumed), str(e), "invalid_argument")
            self.queue.write([(job_id, self.worker_id, [failure], entry, entry)])
            if span is not None:
                span.record([failure])
            return False
        self.jobs[job_id] = RunningJob(entry, spec.reader_lease_ms > 0, span)
        return True

    def _fail_all(self, message: str) -> list[Delivery]:
        deliveries = []
        for job_id in list(self.jobs):
            seq = self.engine.scheduler.sequences.get(job_id)
            index = seq.num_output_tokens if seq is not None else 0
            self.engine.abort(job_id)
            deliveries.append((job_id, [OutputEvent.failure(index, message)], True))
        return deliveries

    def _apply_cancellations(self) -> None:
        stop = self.queue.cancelled({job_id: job.leased for job_id, job in self.jobs.items()})
        for job_id, why in stop.items():
            if why == "abandoned":
                log.info("job %s: its reader lease lapsed (nobody reads it); cancelling it", job_id)
            output = self.engine.abort(job_id)
            if output is not None:
                self._deliver([_delivery(output)])

    def _deliver(self, deliveries: list[Delivery]) -> None:
        deliveries = [d for d in deliveries if d[0] in self.jobs]
        batches = [(job_id, self.worker_id, events, self.jobs[job_id].entry if finished else None,
                    self.jobs[job_id].entry) for job_id, events, finished in deliveries]
        written_ns = time.time_ns()
        try:
            written = self.queue.write(batches)
        except REDIS_UNAVAILABLE:
            self._undelivered = deliveries
            raise
        self._undelivered = []
        for (job_id, events, finished), ok in zip(deliveries, written, strict=True):
            span = self.jobs[job_id].span
            if span is not None:
                span.record(events, lost=not ok, written_ns=written_ns)
            if not ok:                                       # another worker owns it now
                log.warning("lost job %s to another worker; dropping it", job_id)
                self.engine.abort(job_id)
                del self.jobs[job_id]
            elif finished:                                   # written and retired atomically
                del self.jobs[job_id]


def run_worker(redis_config: RedisConfig, queue_config: QueueConfig, config: WorkerConfig) -> None:
    """`meshllm worker`: load the model, warm the kernels, serve until SIGTERM / SIGINT."""
    import signal

    from engine.runtime import configure
    configure(config.threads or None)
    llm = LLM.load(config.model or None, int8_activations=config.fast, device=config.device)
    llm.warm_up(config.kv_cache_dtype)
    worker = Worker(llm, redis_config, queue_config, config)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.run()
