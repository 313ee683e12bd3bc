"""The serving engine: requests in, token events out, one continuous-batching step at a time.

    engine = LLMEngine(model, tokenizer, EngineConfig(), block_store=None)
    engine.add_request("r1", prompt_ids, RequestOptions(...))
    while engine.has_work():
        for output in engine.step():          # RequestOutput(request_id, events, finished)
            ...

A step: import prefix blocks from the shared store for the sequences about to be admitted,
propose prompt-lookup drafts for decoding sequences that asked for them, keeping those that pay
for their rows on this machine (speculation.py: StepCosts learns what a step of n rows costs),
schedule (scheduler.py), run the model on the scheduled chunks (model_runner.py), sample the
sequences that reached their last token (verifying their drafts), publish newly computed full
blocks to the prefix cache and the store, and free the finished.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from .block_pool import BlockPool
from .block_store import BlockStore, InvalidBlock, decode_block, encode_block, kv_storage
from .constraints import GrammarCompiler
from .kv_cache_manager import KVCacheManager
from .model import DecoderModel
from .model_runner import ModelRunner
from .scheduler import Scheduler
from .sequence import RequestOptions, Sequence, TokenEvent
from .speculation import StepCosts, plan_drafts
from .stopping import FinishReason
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)


class GenerationError(ValueError):
    """The request cannot be served as asked (empty prompt, too long for the context, bad ids)."""


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16                  # tokens per KV block (a multiple of 16)
    kv_cache_mb: int = 1024               # memory for the KV block pool
    num_kv_blocks: int | None = None      # overrides kv_cache_mb
    max_num_batched_tokens: int = 512     # token budget of one step (prefill chunk size)
    max_num_seqs: int = 64                # sequences running at once
    max_context: int | None = None        # default: the model's context length
    prefault_kv: bool = True              # map the pool's memory at start-up, not inside requests
    weigh_drafts: bool = True             # keep the drafts worth their rows (speculation.plan_drafts)
    # a step that decodes adds prompt chunks only up to what keeps it within this many seconds, by
    # the step costs learnt on this machine (0: the whole token budget, for offline batches; the
    # worker bounds it: streams beside a long prompt; scheduler.py)
    step_target_s: float = 0.0
    # the KV cache's element type: "float32" (the exact mode's transformers parity), or "float16":
    # half the memory per token, half the bytes attention reads, keys and values rounded to halves
    kv_cache_dtype: str = "float32"

    def __post_init__(self):
        if self.block_size < 16 or self.block_size % 16:
            raise ValueError("block_size must be a positive multiple of 16")
        if self.kv_cache_mb < 1 or (self.num_kv_blocks is not None and self.num_kv_blocks < 1):
            raise ValueError("the KV cache needs memory for at least one block")
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be >= 1")
        if self.step_target_s < 0:
            raise ValueError("step_target_s must be >= 0")
        kv_storage(self.kv_cache_dtype)                 # ValueError naming the choices


@dataclass
class RequestOutput:
    request_id: str
    events: list[TokenEvent] = field(default_factory=list)
    finished: bool = False


@dataclass
class EngineStats:
    steps: int = 0
    computed_tokens: int = 0              # tokens run through the model
    computed_prompt_tokens: int = 0       # of those, prompt tokens (prefill work actually done)
    generated_tokens: int = 0
    remote_blocks_imported: int = 0
    remote_blocks_rejected: int = 0
    blocks_exported: int = 0
    draft_tokens: int = 0                 # speculative tokens verified (speculation.py)
    accepted_draft_tokens: int = 0        # of those, accepted
    verify_steps: int = 0                 # sequence steps that verified drafts
    # MoE router statistics (empty for a dense model): tokens routed to each expert, summed over
    # layers, since start and in the last step; a token counts once per layer per expert it goes to
    expert_tokens: list[int] = field(default_factory=list)
    last_step_expert_tokens: list[int] = field(default_factory=list)

    def add_expert_tokens(self, per_layer) -> None:
        """per_layer (L, E): the model's expert_tokens of one step."""
        step = [int(n) for n in per_layer.sum(axis=0)]
        self.last_step_expert_tokens = step
        self.expert_tokens = [a + b for a, b in zip(self.expert_tokens or [0] * len(step), step, strict=True)]


class LLMEngine:
    def __init__(self, model: DecoderModel, tokenizer: Tokenizer, config: EngineConfig | None = None,
                 block_store: BlockStore | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config = config or EngineConfig()
        mc = model.config
        self.max_context = min(config.max_context or mc.context_length, mc.context_length)
        element = kv_storage(config.kv_cache_dtype).itemsize
        per_block = 2 * element * mc.num_layers * mc.num_kv_heads * mc.head_dim * config.block_size
        num_blocks = config.num_kv_blocks or max(1, config.kv_cache_mb * 2**20 // per_block)
        self.kv_cache = model.new_kv_cache(num_blocks, config.block_size, prefault=config.prefault_kv,
                                           dtype=config.kv_cache_dtype)
        self.pool = BlockPool(num_blocks, config.block_size)
        self.kv = KVCacheManager(self.pool, model.fingerprint)
        self.scheduler = Scheduler(self.kv, config.max_num_batched_tokens, config.max_num_seqs)
        self.runner = ModelRunner(model, self.kv_cache)
        self.stats = EngineStats()
        self.step_costs = StepCosts()                # seconds per step by rows: plan_drafts, prefill_limit
        if config.step_target_s:
            self.scheduler.prefill_limit = self.prefill_limit
        self._arrival = itertools.count()
        self._store = block_store
        self._exporter = _BlockExporter(block_store, self) if block_store is not None else None
        self._k_shape = (mc.num_layers, mc.num_kv_heads, mc.head_dim, config.block_size)
        self.grammars = GrammarCompiler(tokenizer, mc.vocab_size)    # structured output (constraints.py)

    # ------------------------------------------------------------------ requests

    @property
    def capacity_tokens(self) -> int:
        return self.pool.num_blocks * self.pool.block_size

    def validate(self, prompt_ids: list[int], options: RequestOptions) -> None:
        if len(prompt_ids) == 0:
            raise GenerationError("the prompt is empty")
        vocab = self.model.config.vocab_size
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise GenerationError(f"token ids out of range [0, {vocab}): {bad[:5]}")
        if len(prompt_ids) >= self.max_context:
            raise GenerationError(f"the prompt has {len(prompt_ids)} tokens; the context holds {self.max_context}")
        needed = min(len(prompt_ids) + options.stopping.max_new_tokens, self.max_context)
        if needed > self.capacity_tokens:
            raise GenerationError(f"prompt plus max_new_tokens need {needed} tokens of KV cache; "
                                  f"this engine holds {self.capacity_tokens}")

    def add_request(self, request_id: str, prompt_ids: list[int], options: RequestOptions | None = None,
                    resumed_output: list[int] | None = None) -> Sequence:
        """Queue a request. resumed_output: tokens an earlier attempt already streamed (a dead
        worker's job): they are replayed into the state, and generation continues after them."""
        options = options or RequestOptions()
        prompt_ids = list(prompt_ids)
        if request_id in self.scheduler.sequences:
            raise GenerationError(f"request {request_id!r} is already running")
        self.validate(prompt_ids, options)
        constrained = self.grammars.decoder(options.constraint) if options.constraint is not None else None
        seq = Sequence(request_id, prompt_ids, options, self.tokenizer, self.max_context, next(self._arrival),
                       resumed_output, constrained)
        self.scheduler.add(seq)
        return seq

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its blocks; its final event says cancelled."""
        seq = self.scheduler.sequences.get(request_id)
        if seq is None:
            return None
        self.scheduler.finish(seq)
        event = TokenEvent(seq.num_output_tokens, None, "", finish_reason=FinishReason.CANCELLED,
                           prompt_tokens=seq.num_prompt_tokens, cached_prompt_tokens=seq.num_cached_prompt_tokens)
        return RequestOutput(request_id, [event], finished=True)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def intake_room(self) -> tuple[int, int]:
        """(tokens, blocks) the next step has left for sequences not yet added: the prompt tokens
        it may add beside its decode rows (scheduler.prefill_room) less what the held sequences
        still need (a prefilling one's uncomputed tokens, a waiting one's uncached ones), and the
        pool's free blocks less what they will take. A worker takes more jobs only while both are
        positive."""
        if self._store is not None:
            self._import_remote_prefixes()
        running = self.scheduler.running
        decode_rows = sum(1 for seq in running if not seq.is_prefilling)
        tokens = self.scheduler.prefill_room(decode_rows)
        blocks = self.pool.num_free_blocks
        for seq in running:
            if seq.is_prefilling:
                tokens -= seq.num_uncomputed_tokens
            blocks -= max(0, self.kv.blocks_for(seq.num_tokens) - len(seq.block_table))
        for seq in self.scheduler.waiting:
            need_tokens, need_blocks = self._admission_cost(seq)
            tokens -= need_tokens
            blocks -= need_blocks
        return tokens, blocks

    def admission_cost(self, request_id: str) -> tuple[int, int]:
        """(tokens to compute, free blocks to take) to admit a waiting request, once its prefix
        has been looked up in the shared store (imported blocks are cached, as at the next step)."""
        if self._store is not None:
            self._import_remote_prefixes()
        return self._admission_cost(self.scheduler.sequences[request_id])

    def _admission_cost(self, seq: Sequence) -> tuple[int, int]:
        hits = self.kv.cached_prefix(seq)
        uncached = seq.num_tokens - len(hits) * self.kv.block_size
        return uncached, self.kv.admission_blocks(seq, hits, uncached)

    # ------------------------------------------------------------------ the step

    def step(self) -> list[RequestOutput]:
        if self._store is not None:
            self._import_remote_prefixes()
        self._propose_drafts()
        sched = self.scheduler.schedule()
        if not sched.chunks:
            return []
        self.stats.steps += 1
        sequences = self.scheduler.sequences
        chunks = [(sequences[rid], n) for rid, n in sched.chunks]
        started = time.perf_counter()
        results = self.runner.run(chunks)
        if self.model.config.is_moe and hasattr(self.model, "expert_tokens"):
            self.stats.add_expert_tokens(self.model.expert_tokens)
        for seq, n in chunks:
            prompt_part = max(0, min(seq.num_prompt_tokens, seq.num_computed_tokens + n) - seq.num_computed_tokens)
            seq.num_computed_tokens += n - len(seq.draft_ids)    # drafts count once accepted
            self.stats.computed_tokens += n
            self.stats.computed_prompt_tokens += prompt_part
        outputs: dict[str, RequestOutput] = {}
        finished = []
        for seq, result in results:
            if isinstance(result, tuple):
                events = [seq.append_sampled(*result)]
                seq.score_unverified_draft(events[0].token_id)
            elif seq.draft_ids:
                accepted_before = seq.num_drafts_accepted
                self.stats.draft_tokens += len(seq.draft_ids)
                self.stats.verify_steps += 1
                events = seq.verify_drafts(result)
                self.stats.accepted_draft_tokens += seq.num_drafts_accepted - accepted_before
            else:
                events = [seq.append_token(result)]
                seq.score_unverified_draft(events[0].token_id)
            self.stats.generated_tokens += len(events)
            outputs.setdefault(seq.request_id, RequestOutput(seq.request_id)).events.extend(events)
            if events[-1].finish_reason is not None:
                outputs[seq.request_id].finished = True
                finished.append(seq)
        self.step_costs.record(sum(n for _, n in chunks), time.perf_counter() - started)
        for seq, _ in chunks:
            self._publish(seq)
        for seq in finished:
            self.scheduler.finish(seq)
        return list(outputs.values())

    def prefill_limit(self, decode_rows: int) -> int:
        """The most prompt tokens a step of `decode_rows` decode rows may add and still take at
        most config.step_target_s, by the step costs learnt so far (the whole budget while a step
        of fewer rows was never run: running it teaches its cost)."""
        target, budget = self.config.step_target_s, self.config.max_num_batched_tokens
        low, high = 0, budget - decode_rows
        while low < high:                                   # the largest n whose estimate fits
            n = (low + high + 1) // 2
            seconds = self.step_costs.estimate(decode_rows + n)
            if seconds is None or seconds <= target:
                low = n
            else:
                high = n - 1
        return low

    def _propose_drafts(self) -> None:
        """Prompt-lookup drafts for the running sequences about to decode one token, as many of
        them as pay for their rows on this machine (speculation.plan_drafts)."""
        decoding = [seq for seq in self.scheduler.running if seq.num_uncomputed_tokens == 1]
        speculating = [seq for seq in decoding if seq.options.speculation.enabled]
        for seq in speculating:
            seq.propose_drafts()
        if self.config.weigh_drafts and any(seq.draft_ids for seq in speculating):
            keep = plan_drafts(len(decoding), [seq.draft_acceptance(len(seq.draft_ids)) for seq in speculating],
                               self.step_costs.estimate)
            for seq, n in zip(speculating, keep, strict=True):
                seq.keep_drafts(n)

    def _publish(self, seq: Sequence) -> None:
        for block_id, block_hash, _ in self.kv.publish_computed_blocks(seq):
            if self._exporter is not None:                  # copies: the block may be reused before it is sent
                keys, values = self.kv_cache.read_block(block_id)
                self._exporter.offer(block_hash, keys, values)

    def _import_remote_prefixes(self) -> None:
        """Copy the next cached blocks of waiting prompts from the store into the local prefix cache
        (as free, cached blocks), so that admission finds them like local hits. One store round trip
        per sequence, once per sequence."""
        room = self.scheduler.max_num_seqs - len(self.scheduler.running)
        for seq in list(self.scheduler.waiting)[:max(room, 0)]:
            if seq.remote_lookup_done:
                continue
            seq.remote_lookup_done = True
            start = len(self.kv.cached_prefix(seq))
            end = self.kv.max_prefix_blocks(seq)
            if start >= end:
                continue
            keys = seq.block_hashes[start:end]
            try:
                values = self._store.get_many(keys)
            except Exception as e:                       # a cache: failing to read it is a miss
                log.warning("KV store read failed: %s", e)
                continue
            for i, data in enumerate(values):
                if data is None or self.pool.num_free_blocks == 0:
                    break
                try:
                    k, v = decode_block(data, self.model.fingerprint, keys[i], self._k_shape,
                                        self.config.kv_cache_dtype)
                except InvalidBlock as e:
                    self.stats.remote_blocks_rejected += 1
                    log.warning("rejected a stored KV block (%s): recomputing it", e)
                    break
                (block_id,) = self.pool.allocate(1)
                self.kv_cache.write_block(block_id, k, v)
                self.pool.cache(block_id, keys[i], self.kv.block_tokens(seq, start + i))
                self.pool.free([block_id])
                self.stats.remote_blocks_imported += 1

    def flush_exports(self) -> None:
        """Wait until every block offered to the store has been written (tests, shutdown)."""
        if self._exporter is not None:
            self._exporter.flush()

    def close(self) -> None:
        if self._exporter is not None:
            self._exporter.stop()


class _BlockExporter:
    """Encodes and writes full blocks to the store on a background thread, so a step never waits
    on the network. The store is a cache: when the queue is full, blocks are dropped."""

    def __init__(self, store: BlockStore, engine: LLMEngine, max_pending: int = 4096):
        self._store = store
        self._engine = engine
        self._queue: queue.Queue = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name="kv-export", daemon=True)
        self._thread.start()

    def offer(self, block_hash, keys, values) -> None:
        try:
            self._queue.put_nowait((block_hash, keys, values))
        except queue.Full:
            pass

    def _run(self) -> None:
        fingerprint = self._engine.model.fingerprint
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            batch = [item]
            while len(batch) < 32:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)                # let the outer loop see the stop
                    self._queue.task_done()
                    break
                batch.append(nxt)
            try:
                self._store.put_many([(h, encode_block(fingerprint, h, k, v)) for h, k, v in batch])
                self._engine.stats.blocks_exported += len(batch)
            except Exception as e:
                log.warning("KV store write failed: %s", e)
            for _ in batch:
                self._queue.task_done()

    def flush(self) -> None:
        self._queue.join()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
