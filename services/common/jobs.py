"""The generation job queue on Redis, shared by the front-end that submits and the workers that run.

- Submitting is one Lua call that refuses past max_queue_len (jobs queued or running): the
  stream keeps a job's entry until the job ends, so its length is the number outstanding.
- Workers read jobs through the consumer group `workers` (at-least-once delivery) and renew the
  jobs they run every heartbeat. A job not renewed for claim_idle_ms belongs to a dead worker:
  another worker claims it (XAUTOCLAIM), becomes its owner, reads what was already streamed and
  continues after it. The old worker, if it was only slow, is fenced: every output write checks
  ownership in the same Lua call, so it cannot append after losing the job.
- A job's output is a stream of events numbered 0, 1, 2, ...; the reader checks the numbering, so
  an answer is delivered once, complete, without gaps or duplicates.
Job specs and events are JSON and flat strings: never pickle.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields

import redis

from engine.constraints import OutputConstraint
from engine.sampling import SamplingParams
from engine.sequence import RequestOptions, TokenEvent
from engine.speculation import SpeculationParams
from engine.stopping import FinishReason, StoppingCriteria

from .config import QueueConfig
from .keys import WORKER_GROUP, Keys


class QueueFull(RuntimeError):
    """More jobs outstanding than max_queue_len."""


class JobFailed(RuntimeError):
    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


_SUBMIT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
"""

# KEYS: owner, output stream, jobs stream, cancel flag. ARGV: worker, ttl, group, entry id to
# retire ('' unless the events end the job), event count, then per event its field count and fields.
_WRITE_FENCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[5])
local i = 6
for _ = 1, n do
  local count = tonumber(ARGV[i])
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 1, i + count))
  i = i + count + 1
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
  redis.call('XDEL', KEYS[3], ARGV[4])
  redis.call('DEL', KEYS[1], KEYS[4])
else
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


@dataclass
class JobSpec:
    """What a worker needs to run a request: JSON on the wire."""
    job_id: str
    prompt_ids: list[int]
    sampling: dict = field(default_factory=dict)
    stopping: dict = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    skip_special_tokens: bool = True
    submitted_at: float = 0.0
    speculation: dict = field(default_factory=dict)
    constraint: dict | None = None          # OutputConstraint.as_dict(), or None
    traceparent: str = ""           # W3C trace context of the span that queued it ("": not traced)

    @classmethod
    def from_options(cls, job_id: str, prompt_ids: list[int], options: RequestOptions) -> JobSpec:
        stopping = asdict(options.stopping)
        stopping["stop_sequences"] = list(stopping["stop_sequences"])
        stopping["stop_token_ids"] = list(stopping["stop_token_ids"])
        return cls(job_id, list(prompt_ids), asdict(options.sampling), stopping, options.logprobs,
                   options.top_logprobs, options.skip_special_tokens, time.time(), asdict(options.speculation),
                   options.constraint.as_dict() if options.constraint is not None else None)

    def options(self) -> RequestOptions:
        stopping = dict(self.stopping)
        stopping["stop_sequences"] = tuple(stopping.get("stop_sequences", ()))
        stopping["stop_token_ids"] = tuple(stopping.get("stop_token_ids", ()))
        constraint = OutputConstraint(**self.constraint) if self.constraint else None
        return RequestOptions(SamplingParams(**self.sampling), StoppingCriteria(**stopping), self.logprobs,
                              self.top_logprobs, self.skip_special_tokens, SpeculationParams(**self.speculation),
                              constraint)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> JobSpec:
        """Fields this version does not know (a newer front-end's) are ignored, so that a rolling
        upgrade does not drop jobs; those it knows and the job lacks take their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(data).items() if k in known})


@dataclass
class OutputEvent:
    """One entry of a job's output stream."""
    index: int                      # 0, 1, 2, ... per job
    token_id: int | None
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    error: str = ""
    error_code: str = ""

    @property
    def is_final(self) -> bool:
        return self.finish_reason is not None

    @classmethod
    def from_token_event(cls, event: TokenEvent, index: int) -> OutputEvent:
        return cls(index, event.token_id, event.text, event.logprob, list(event.top_logprobs),
                   event.finish_reason.value if event.finish_reason else None, event.prompt_tokens,
                   event.cached_prompt_tokens)

    @classmethod
    def failure(cls, index: int, message: str, code: str = "internal") -> OutputEvent:
        return cls(index, None, "", finish_reason=FinishReason.ERROR.value, error=message, error_code=code)

    def fields(self) -> list[str]:
        f = {"i": str(self.index), "t": "" if self.token_id is None else str(self.token_id), "x": self.text,
             "f": self.finish_reason or "", "pt": str(self.prompt_tokens), "ct": str(self.cached_prompt_tokens)}
        if self.logprob is not None:
            f["lp"] = repr(self.logprob)
        if self.top_logprobs:
            f["top"] = json.dumps(self.top_logprobs)
        if self.error:
            f["err"] = self.error
            f["code"] = self.error_code
        return [item for kv in f.items() for item in kv]

    @classmethod
    def parse(cls, raw: dict) -> OutputEvent:
        d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in raw.items()}
        return cls(int(d["i"]), int(d["t"]) if d.get("t") else None, d.get("x", ""),
                   float(d["lp"]) if d.get("lp") else None,
                   [tuple(p) for p in json.loads(d["top"])] if d.get("top") else [],
                   d.get("f") or None, int(d.get("pt", 0)), int(d.get("ct", 0)), d.get("err", ""), d.get("code", ""))


class EventOrder:
    """Delivers a job's events once each, in index order (a repeat is skipped, a gap is an error)."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.expected = 0

    def accept(self, event: OutputEvent) -> bool:
        if event.index < self.expected:
            return False
        if event.index > self.expected:
            raise RuntimeError(f"job {self.job_id}: output jumps from event {self.expected} to {event.index}")
        self.expected += 1
        return True


class JobQueue:
    def __init__(self, client: redis.Redis, keys: Keys, config: QueueConfig | None = None):
        self.redis = client
        self.keys = keys
        self.config = config or QueueConfig()
        self._submit = client.register_script(_SUBMIT)
        self._write = client.register_script(_WRITE_FENCED)

    # ------------------------------------------------------------------ clients

    def submit(self, spec: JobSpec) -> str:
        entry = self._submit(keys=[self.keys.jobs], args=[self.config.max_queue_len, spec.to_json()])
        if entry is None:
            raise QueueFull(f"{self.config.max_queue_len} jobs are already queued or running; retry later")
        return entry.decode() if isinstance(entry, bytes) else entry

    def cancel(self, job_id: str) -> None:
        self.redis.set(self.keys.job_cancel(job_id), 1, ex=self.config.output_ttl_s)

    def outstanding(self) -> int:
        """Jobs queued or running."""
        return int(self.redis.xlen(self.keys.jobs))

    def events(self, job_id: str, timeout_s: float | None = None, block_ms: int = 1000) -> Iterator[OutputEvent]:
        """The job's events in order until its final one. Raises TimeoutError past timeout_s."""
        key = self.keys.job_output(job_id)
        last_id = "0-0"
        order = EventOrder(job_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = block_ms if deadline is None else max(1, min(block_ms, int((deadline - time.monotonic()) * 1000)))
            reply = self.redis.xread({key: last_id}, count=256, block=wait)
            for _stream, entries in reply or []:
                for entry_id, raw in entries:
                    last_id = entry_id
                    event = OutputEvent.parse(raw)
                    if order.accept(event):
                        yield event
                        if event.is_final:
                            return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id}: no final event within {timeout_s}s")

    # ------------------------------------------------------------------ workers

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.keys.jobs, WORKER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def read_new(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, JobSpec | None]]:
        if count <= 0:
            if block_ms:
                time.sleep(block_ms / 1000)
            return []
        reply = self.redis.xreadgroup(WORKER_GROUP, consumer, {self.keys.jobs: ">"}, count=count,
                                      block=block_ms or None)
        return [(entry_id.decode(), self._spec(raw)) for _s, entries in reply or [] for entry_id, raw in entries]

    def claim_stale(self, consumer: str, count: int) -> list[tuple[str, JobSpec | None]]:
        """Jobs whose worker stopped renewing them (it died): now this consumer's."""
        reply = self.redis.xautoclaim(self.keys.jobs, WORKER_GROUP, consumer, self.config.claim_idle_ms,
                                      start_id="0-0", count=count)
        entries = reply[1] if reply else []
        return [(entry_id.decode(), self._spec(raw)) for entry_id, raw in entries if entry_id]

    def renew(self, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of this worker's jobs: they are alive."""
        if entry_ids:
            self.redis.xclaim(self.keys.jobs, WORKER_GROUP, consumer, 0, entry_ids, justid=True)

    def take_ownership(self, job_id: str, worker_id: str) -> None:
        self.redis.set(self.keys.job_owner(job_id), worker_id, ex=self.config.output_ttl_s)

    def already_streamed(self, job_id: str) -> tuple[list[int], bool]:
        """(token ids a previous owner streamed, whether its final event is among them)."""
        tokens, final = [], False
        for _entry_id, raw in self.redis.xrange(self.keys.job_output(job_id)):
            event = OutputEvent.parse(raw)
            if event.token_id is not None and event.index == len(tokens):
                tokens.append(event.token_id)
            final = final or event.is_final
        return tokens, final

    def write(self, batches: list[tuple[str, str, list[OutputEvent], str | None]]) -> list[bool]:
        """Append (job_id, owner worker_id, events, entry_id) batches in one round trip; False
        where the worker no longer owns the job (nothing written). With an entry_id (the events
        end the job) the job leaves the queue in the same atomic call: a client that has read the
        final event finds the job gone from the queue."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id, worker_id, events, entry_id in batches:
            args = [worker_id, self.config.output_ttl_s, WORKER_GROUP, entry_id or "", len(events)]
            for e in events:
                f = e.fields()
                args += [len(f), *f]
            keys = [self.keys.job_owner(job_id), self.keys.job_output(job_id), self.keys.jobs,
                    self.keys.job_cancel(job_id)]
            self._write(keys=keys, args=args, client=pipe)
        return [bool(r) for r in pipe.execute()]

    def cancelled(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        flags = self.redis.mget([self.keys.job_cancel(j) for j in job_ids])
        return {j for j, flag in zip(job_ids, flags, strict=True) if flag is not None}

    def finish(self, entry_id: str, job_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.keys.jobs, WORKER_GROUP, entry_id)
        pipe.xdel(self.keys.jobs, entry_id)
        pipe.delete(self.keys.job_owner(job_id), self.keys.job_cancel(job_id))
        pipe.execute()

    @staticmethod
    def _spec(raw) -> JobSpec | None:
        if not raw:                      # an entry deleted while pending
            return None
        data = raw.get(b"job") or raw.get("job")
        try:
            return JobSpec.from_json(data)
        except (TypeError, ValueError, KeyError):
            return None


class AsyncJobClient:
    """The front-end's side of the queue, on redis.asyncio: submit, relay, cancel."""

    def __init__(self, client, keys: Keys, config: QueueConfig | None = None):
        self.redis = client
        self.keys = keys
        self.config = config or QueueConfig()
        self._submit = client.register_script(_SUBMIT)

    async def reserve(self, job_id: str) -> bool:
        """Claim a request id for this job; False if a job with that id exists (or did recently)."""
        return bool(await self.redis.set(self.keys.job_request(job_id), 1, nx=True, ex=self.config.output_ttl_s))

    async def submit(self, spec: JobSpec) -> None:
        entry = await self._submit(keys=[self.keys.jobs], args=[self.config.max_queue_len, spec.to_json()])
        if entry is None:
            raise QueueFull(f"{self.config.max_queue_len} jobs are already queued or running; retry later")

    async def cancel(self, job_id: str) -> bool:
        """Ask the job's worker to stop it; False if no such job is known."""
        if not await self.redis.exists(self.keys.job_request(job_id)):
            return False
        await self.redis.set(self.keys.job_cancel(job_id), 1, ex=self.config.output_ttl_s)
        return True

    async def events(self, job_id: str, block_ms: int = 1000):
        """The job's events in order until its final one (an async iterator)."""
        key = self.keys.job_output(job_id)
        last_id = "0-0"
        order = EventOrder(job_id)
        while True:
            reply = await self.redis.xread({key: last_id}, count=256, block=block_ms)
            for _stream, entries in reply or []:
                for entry_id, raw in entries:
                    last_id = entry_id
                    event = OutputEvent.parse(raw)
                    if order.accept(event):
                        yield event
                        if event.is_final:
                            return

    async def outstanding(self) -> int:
        return int(await self.redis.xlen(self.keys.jobs))

    async def workers(self) -> list[dict]:
        """The live workers' heartbeat hashes."""
        keys = [k async for k in self.redis.scan_iter(match=self.keys.workers_pattern, count=100)]
        infos = []
        for key in keys:
            raw = await self.redis.hgetall(key)
            if raw:
                infos.append({k.decode(): v.decode() for k, v in raw.items()})
        return infos
