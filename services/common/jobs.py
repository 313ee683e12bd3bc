"""The generation job queue on Redis, shared by the front-end that submits and the workers that run.

- Submitting is one Lua call that refuses past max_queue_len (jobs queued or running, counted by
  `outstanding`: +1 on submit, -1 by the call that deletes the job's entry when it ends). A job
  goes to the shared stream, or (KV-aware routing, services/generation/router.py) to the routed
  stream of the worker that holds its prompt's prefix, while that worker is alive.
- Workers read jobs through the consumer group `workers` (at-least-once delivery) and renew the
  jobs they run every heartbeat. A job not renewed for claim_idle_ms belongs to a dead worker:
  another worker claims it (XAUTOCLAIM), becomes its owner, reads what was already streamed and
  continues after it. The old worker, if it was only slow, is fenced: every output write checks
  ownership in the same Lua call, so it cannot append after losing the job.
- A job's output is a stream of events numbered 0, 1, 2, ...; the reader checks the numbering, so
  an answer is delivered once, complete, without gaps or duplicates.
- The reader renews the job's reader lease while it reads; a worker cancels a job whose lease
  lapsed (its front-end died, or its client stopped reading), so no slot runs for nobody.
Job specs and events are JSON and flat strings: never pickle.
"""
from __future__ import annotations

import asyncio
import json
import logging
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
from .redis_client import UNAVAILABLE as REDIS_UNAVAILABLE
from .redis_client import ReplicaWait, scan_keys_async

log = logging.getLogger("meshllm.jobs")


class QueueFull(RuntimeError):
    """More jobs outstanding than max_queue_len."""


class JobFailed(RuntimeError):
    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


# KEYS: the shared jobs stream, the outstanding counter, the job's reader key, the routed stream
# (the shared one again when not routed), that worker's heartbeat hash. ARGV: max_queue_len, the
# spec's JSON, reader lease ms (0: none). A routed job goes to its worker's stream only while that
# worker is alive and its stream exists (a dead worker's stream takes nothing new); else the shared
# one. Returns {entry id, stream}, or false when the queue is full.
_SUBMIT = """
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[1]) then return false end
local stream = KEYS[1]
if KEYS[4] ~= KEYS[1] and redis.call('EXISTS', KEYS[5]) == 1 and redis.call('EXISTS', KEYS[4]) == 1 then
  stream = KEYS[4]
end
local entry = redis.call('XADD', stream, '*', 'job', ARGV[2])
redis.call('INCR', KEYS[2])
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[3], '1', 'PX', ARGV[3]) end
return {entry, stream}
"""

# Retiring a job's entry: ack, delete, and count it out of the outstanding jobs exactly once (only
# the call whose XDEL removed the entry decrements).
_RETIRE_LUA = """
local function retire(stream, group, entry, counter)
  redis.call('XACK', stream, group, entry)
  if redis.call('XDEL', stream, entry) == 1 and tonumber(redis.call('GET', counter) or '0') > 0 then
    redis.call('DECR', counter)
  end
end
"""

# One call writes a whole engine step's events, every job fenced by its owner key.
# KEYS: the outstanding counter, then per job its owner, output stream, cancel flag, reader key and
# the stream its entry is in. ARGV: ttl, group, job count, then per job: worker, entry id to retire
# ('' unless the events end the job), event count, then per event its field count and fields.
# Returns 1/0 per job (0: the worker no longer owns it, nothing written).
_WRITE_FENCED = _RETIRE_LUA + """
local ttl, group = ARGV[1], ARGV[2]
local written = {}
local i = 4
for j = 1, tonumber(ARGV[3]) do
  local k = 5 * (j - 1) + 1
  local owner, out, cancel, reader, stream = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]
  local worker, entry, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local mine = redis.call('GET', owner) == worker
  for _ = 1, n do
    local count = tonumber(ARGV[i])
    if mine then redis.call('XADD', out, '*', unpack(ARGV, i + 1, i + count)) end
    i = i + count + 1
  end
  if mine then
    redis.call('EXPIRE', out, ttl)
    if entry ~= '' then
      retire(stream, group, entry, KEYS[1])
      redis.call('DEL', owner, cancel, reader)
    else
      redis.call('EXPIRE', owner, ttl)
    end
  end
  written[j] = mine and 1 or 0
end
return written
"""

# KEYS: the outstanding counter, the stream, the job's owner, cancel and reader keys. ARGV: group, entry.
_FINISH = _RETIRE_LUA + """
retire(KEYS[2], ARGV[1], ARGV[2], KEYS[1])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
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
    reader_lease_ms: int = 0        # > 0: cancel the job once its reader key lapses (its reader is gone)

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


@dataclass(frozen=True)
class JobEntry:
    """Where a job waits in the queue: the stream (shared or a worker's routed one) and its entry."""
    stream: str
    entry_id: str


@dataclass(frozen=True)
class Route:
    """Where the front-end sends a job: a worker's routed stream, or the shared one (worker None)."""
    worker_id: str | None = None


SHARED = Route()


def _submit_keys(keys: Keys, spec: JobSpec, route: Route) -> list[str]:
    routed = route.worker_id is not None
    return [keys.jobs, keys.outstanding, keys.job_reader(spec.job_id),
            keys.route(route.worker_id) if routed else keys.jobs,
            keys.worker(route.worker_id) if routed else keys.jobs]


def _entry(reply) -> JobEntry:
    entry, stream = (v.decode() if isinstance(v, bytes) else v for v in reply)
    return JobEntry(stream, entry)


class JobQueue:
    """The workers' side of the queue (and a synchronous submit, for tools and tests).

    A worker reads its own routed stream and the shared one; it also serves the routed streams of
    workers that died (their unread jobs, and through XAUTOCLAIM their running ones).
    `replicated` (a Redis Cluster or a Sentinel-managed primary): every submit and every output
    write waits for one replica to acknowledge it (WAIT), so that a primary's failover promotes a
    replica that has every accepted job and every event a reader may have seen."""

    def __init__(self, client: redis.Redis, keys: Keys, config: QueueConfig | None = None, replicated: bool = False):
        self.redis = client
        self.keys = keys
        self.config = config or QueueConfig()
        self.replicated = replicated
        self._submit = client.register_script(_SUBMIT)
        self._write = client.register_script(_WRITE_FENCED)
        self._finish = client.register_script(_FINISH)
        self.orphaned: list[str] = []            # routed streams of dead workers, found each heartbeat
        self._replica = ReplicaWait(client, self.keys.jobs)

    def _replicate(self) -> None:
        if self.replicated:
            self._replica.wait()

    # ------------------------------------------------------------------ clients

    def submit(self, spec: JobSpec, route: Route = SHARED) -> JobEntry:
        if not spec.reader_lease_ms:
            spec.reader_lease_ms = self.config.reader_lease_ms
        reply = self._submit(keys=_submit_keys(self.keys, spec, route),
                             args=[self.config.max_queue_len, spec.to_json(), spec.reader_lease_ms])
        if reply is None:
            raise QueueFull(f"{self.config.max_queue_len} jobs are already queued or running; retry later")
        self._replicate()
        return _entry(reply)

    def cancel(self, job_id: str) -> None:
        self.redis.set(self.keys.job_cancel(job_id), 1, ex=self.config.output_ttl_s)

    def outstanding(self) -> int:
        """Jobs queued or running."""
        return int(self.redis.get(self.keys.outstanding) or 0)

    def events(self, job_id: str, timeout_s: float | None = None, block_ms: int = 1000) -> Iterator[OutputEvent]:
        """The job's events in order until its final one. Raises TimeoutError past timeout_s; rides
        out a Redis outage (a failover) of up to config.redis_outage_s."""
        key = self.keys.job_output(job_id)
        last_id = "0-0"
        order = EventOrder(job_id)
        lease = ReaderLease(self.keys.job_reader(job_id), self.config.reader_lease_ms)
        outage = Outage(job_id, self.config.redis_outage_s)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = block_ms if deadline is None else max(1, min(block_ms, int((deadline - time.monotonic()) * 1000)))
            try:
                if lease.due():
                    self.redis.set(lease.key, 1, px=lease.ms)
                reply = self.redis.xread({key: last_id}, count=256, block=min(wait, lease.block_ms))
                if outage.since is not None:
                    outage.over(self.redis.exists(*_job_traces(self.keys, job_id)))
            except REDIS_UNAVAILABLE as e:
                outage.failed(e)
                lease.renew_now()
                time.sleep(0.25)
                continue
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

    def ensure_group(self, worker_id: str | None = None) -> None:
        """The consumer group on the shared stream and, with worker_id, on that worker's routed
        stream (registered in the routes set, so that others find it when the worker dies)."""
        streams = [self.keys.jobs] + ([self.keys.route(worker_id)] if worker_id else [])
        for stream in streams:
            try:
                self.redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        if worker_id:
            self.redis.sadd(self.keys.routes, worker_id)

    def find_orphans(self, worker_id: str) -> list[str]:
        """The routed streams of workers whose heartbeat lapsed; an empty one is deleted (and its
        worker forgotten), since submit no longer routes to a worker without a heartbeat."""
        members = [m.decode() for m in self.redis.smembers(self.keys.routes)]
        others = [m for m in members if m != worker_id]
        if not others:
            self.orphaned = []
            return []
        pipe = self.redis.pipeline(transaction=False)
        for other in others:
            pipe.exists(self.keys.worker(other))
            pipe.xlen(self.keys.route(other))
        replies = pipe.execute()
        orphaned = []
        for i, other in enumerate(others):
            alive, length = replies[2 * i], replies[2 * i + 1]
            if alive:
                continue
            if length:
                orphaned.append(self.keys.route(other))
            else:
                self._forget(other)
        self.orphaned = orphaned
        return orphaned

    def _forget(self, worker_id: str) -> None:
        """Delete a dead worker's empty routed stream and its published blocks (atomically: not if
        a job arrived meanwhile)."""
        self.redis.eval("""
if redis.call('EXISTS', KEYS[3]) == 0 and redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[4])
  redis.call('SREM', KEYS[2], ARGV[1])
end
return 1""", 4, self.keys.route(worker_id), self.keys.routes, self.keys.worker(worker_id),
                        self.keys.worker_blocks(worker_id), worker_id)

    def read_routed(self, consumer: str, count: int) -> list[tuple[JobEntry, JobSpec | None]]:
        """New jobs routed to this worker, and to dead workers (up to `count` from each stream)."""
        return self._read(consumer, [self.keys.route(consumer), *self.orphaned], count) if count > 0 else []

    def read_shared(self, consumer: str, count: int) -> list[tuple[JobEntry, JobSpec | None]]:
        """Up to `count` new jobs from the shared stream, oldest first."""
        return self._read(consumer, [self.keys.jobs], count) if count > 0 else []

    def wait_new(self, consumer: str, block_ms: int) -> list[tuple[JobEntry, JobSpec | None]]:
        """The first new job on any of this worker's streams, waiting up to block_ms for one (at
        most one per stream comes back)."""
        return self._read(consumer, [self.keys.route(consumer), *self.orphaned, self.keys.jobs], 1, block_ms)

    def read_new(self, consumer: str, count: int, block_ms: int = 0) -> list[tuple[JobEntry, JobSpec | None]]:
        """About `count` new jobs: routed ones first, then the shared stream's for what is left;
        with none anywhere, waits up to block_ms for the first."""
        found = self.read_routed(consumer, count)
        found += self.read_shared(consumer, count - len(found))
        if not found and count > 0 and block_ms:
            found = self.wait_new(consumer, block_ms)
        return found

    def _read(self, consumer: str, streams: list[str], count: int, block_ms: int = 0) \
            -> list[tuple[JobEntry, JobSpec | None]]:
        """XREADGROUP's new entries of these streams, up to `count` per stream. Every entry it
        returns is this consumer's pending entry from then on, so all of them are returned: one
        dropped here would wait out claim_idle_ms before anyone started it."""
        reply = self.redis.xreadgroup(WORKER_GROUP, consumer, {s: ">" for s in streams}, count=count,
                                      block=block_ms or None)
        return [(JobEntry(_text(stream), entry_id.decode()), self._spec(raw))
                for stream, entries in reply or [] for entry_id, raw in entries]

    def claim_stale(self, consumer: str, count: int) -> list[tuple[JobEntry, JobSpec | None]]:
        """Jobs whose worker stopped renewing them (it died): now this consumer's."""
        found = []
        for stream in [self.keys.jobs, *self.orphaned]:
            if len(found) >= count:
                break
            reply = self.redis.xautoclaim(stream, WORKER_GROUP, consumer, self.config.claim_idle_ms,
                                          start_id="0-0", count=count - len(found))
            found += [(JobEntry(stream, entry_id.decode()), self._spec(raw))
                      for entry_id, raw in (reply[1] if reply else []) if entry_id]
        return found

    def renew(self, consumer: str, entries: list[JobEntry]) -> None:
        """Reset the idle time of this worker's jobs: they are alive."""
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        if not by_stream:
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xclaim(stream, WORKER_GROUP, consumer, 0, ids, justid=True)
        pipe.execute()

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

    def write(self, batches: list[tuple[str, str, list[OutputEvent], JobEntry | None, JobEntry]]) -> list[bool]:
        """Append (job_id, owner worker_id, events, entry to retire or None, its entry) batches in
        one atomic call; False where the worker no longer owns the job (nothing written). With an
        entry to retire (the events end the job) the job leaves the queue in the same call: a
        client that has read the final event finds the job gone from the queue."""
        if not batches:
            return []
        keys = [self.keys.outstanding]
        args = [self.config.output_ttl_s, WORKER_GROUP, len(batches)]
        for job_id, worker_id, events, retire, entry in batches:
            keys += [self.keys.job_owner(job_id), self.keys.job_output(job_id), self.keys.job_cancel(job_id),
                     self.keys.job_reader(job_id), entry.stream]
            args += [worker_id, retire.entry_id if retire else "", len(events)]
            for e in events:
                f = e.fields()
                args += [len(f), *f]
        written = [bool(r) for r in self._write(keys=keys, args=args)]
        self._replicate()
        return written

    def cancelled(self, jobs: dict[str, bool]) -> dict[str, str]:
        """Of {job id: whether it has a reader lease}, those to stop: {job id: "cancelled" (the
        client cancelled) or "abandoned" (its reader lease lapsed: nobody reads it any more)}."""
        if not jobs:
            return {}
        ids = list(jobs)
        leased = [j for j in ids if jobs[j]]
        flags = self.redis.mget([self.keys.job_cancel(j) for j in ids] + [self.keys.job_reader(j) for j in leased])
        stop = {j: "cancelled" for j, flag in zip(ids, flags[:len(ids)], strict=True) if flag is not None}
        for j, reader in zip(leased, flags[len(ids):], strict=True):
            if reader is None and j not in stop:
                stop[j] = "abandoned"
        return stop

    def finish(self, entry: JobEntry, job_id: str) -> None:
        self._finish(keys=[self.keys.outstanding, entry.stream, self.keys.job_owner(job_id),
                           self.keys.job_cancel(job_id), self.keys.job_reader(job_id)],
                     args=[WORKER_GROUP, entry.entry_id])

    def publish_blocks(self, worker_id: str, added: list[bytes], removed: list[bytes], full: bool) -> None:
        """This worker's prefix-cache changes into its published block set (the router reads it):
        `full` replaces the set with `added` (at start, and after the set lapsed)."""
        key = self.keys.worker_blocks(worker_id)
        pipe = self.redis.pipeline(transaction=False)
        if full:
            pipe.delete(key)
        for start in range(0, len(removed), 1000):
            pipe.srem(key, *removed[start:start + 1000])
        for start in range(0, len(added), 1000):
            pipe.sadd(key, *added[start:start + 1000])
        pipe.pexpire(key, 10 * self.config.heartbeat_ms)
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


def _job_traces(keys: Keys, job_id: str) -> list[str]:
    """Keys that exist while Redis still knows the job (one slot: one EXISTS)."""
    return [keys.job_request(job_id), keys.job_output(job_id), keys.job_reader(job_id)]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Outage:
    """A reader's view of a Redis outage: retried for up to `grace_s` (a failover takes seconds),
    then the error stands. When Redis answers again, the job must still be known there (a Redis
    that came back empty lost it): else JobFailed, UNAVAILABLE to the caller, never a hang."""

    def __init__(self, job_id: str, grace_s: float):
        self.job_id = job_id
        self.grace_s = grace_s
        self.since: float | None = None

    def failed(self, error: Exception) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            log.warning("job %s: Redis unreachable (%s); retrying for %.0fs", self.job_id, error, self.grace_s)
        if now - self.since > self.grace_s:
            raise error

    def over(self, job_known: bool) -> None:
        self.since = None
        if not job_known:
            raise JobFailed(f"job {self.job_id}: Redis came back without it (its data was lost); retry",
                            "unavailable")


class ReaderLease:
    """A reader renews its job's reader key (every quarter lease) while it reads: a job whose key
    lapses has lost its reader (the front-end died, or its client stopped reading) and its worker
    cancels it. XREAD blocks at most a quarter lease, so an idle stream still renews in time."""

    def __init__(self, key: str, ms: int):
        self.key = key
        self.ms = ms
        self.block_ms = max(1, ms // 4) if ms > 0 else 1 << 30
        self._next = 0.0

    def renew_now(self) -> None:
        self._next = 0.0

    def due(self) -> bool:
        if self.ms <= 0:
            return False
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.ms / 4000
        return True


class AsyncJobClient:
    """The front-end's side of the queue, on redis.asyncio: submit, relay, cancel. `replicated`:
    as JobQueue's (a job is accepted once a replica has it)."""

    def __init__(self, client, keys: Keys, config: QueueConfig | None = None, replicated: bool = False):
        self.redis = client
        self.keys = keys
        self.config = config or QueueConfig()
        self.replicated = replicated
        self._submit = client.register_script(_SUBMIT)
        self._replica = ReplicaWait(client, self.keys.jobs)

    async def reserve(self, job_id: str) -> bool:
        """Claim a request id for this job; False if a job with that id exists (or did recently)."""
        return bool(await self.redis.set(self.keys.job_request(job_id), 1, nx=True, ex=self.config.output_ttl_s))

    async def submit(self, spec: JobSpec, route: Route = SHARED) -> JobEntry:
        """Queue the job (on `route`'s worker stream while that worker lives, else the shared
        one); QueueFull past max_queue_len."""
        spec.reader_lease_ms = self.config.reader_lease_ms
        reply = await self._submit(keys=_submit_keys(self.keys, spec, route),
                                   args=[self.config.max_queue_len, spec.to_json(), spec.reader_lease_ms])
        if reply is None:
            raise QueueFull(f"{self.config.max_queue_len} jobs are already queued or running; retry later")
        if self.replicated:
            await self._replica.wait_async()
        return _entry(reply)

    async def cancel(self, job_id: str) -> bool:
        """Ask the job's worker to stop it; False if no such job is known."""
        if not await self.redis.exists(self.keys.job_request(job_id)):
            return False
        await self.redis.set(self.keys.job_cancel(job_id), 1, ex=self.config.output_ttl_s)
        return True

    async def events(self, job_id: str, block_ms: int = 1000):
        """The job's events in order until its final one (an async iterator); rides out a Redis
        outage (a failover) of up to config.redis_outage_s."""
        key = self.keys.job_output(job_id)
        last_id = "0-0"
        order = EventOrder(job_id)
        lease = ReaderLease(self.keys.job_reader(job_id), self.config.reader_lease_ms)
        outage = Outage(job_id, self.config.redis_outage_s)
        while True:
            try:
                if lease.due():
                    await self.redis.set(lease.key, 1, px=lease.ms)
                reply = await self.redis.xread({key: last_id}, count=256, block=min(block_ms, lease.block_ms))
                if outage.since is not None:
                    outage.over(await self.redis.exists(*_job_traces(self.keys, job_id)))
            except REDIS_UNAVAILABLE as e:
                outage.failed(e)
                lease.renew_now()
                await asyncio.sleep(0.25)
                continue
            for _stream, entries in reply or []:
                for entry_id, raw in entries:
                    last_id = entry_id
                    event = OutputEvent.parse(raw)
                    if order.accept(event):
                        yield event
                        if event.is_final:
                            return

    async def outstanding(self) -> int:
        """Jobs queued or running."""
        return int(await self.redis.get(self.keys.outstanding) or 0)

    async def workers(self) -> list[dict]:
        """The live workers' heartbeat hashes, each with its `worker_id`."""
        keys = await scan_keys_async(self.redis, self.keys.workers_pattern)
        infos = []
        for key in keys:
            raw = await self.redis.hgetall(key)
            if raw:
                info = {k.decode(): v.decode() for k, v in raw.items()}
                info["worker_id"] = key.decode()[len(self.keys.worker("")):]
                infos.append(info)
        return infos
