"""Workers as processes: a real redis-server, `meshllm worker` subprocesses, jobs through the queue."""
import signal
import threading
import time
import uuid

import pytest

from engine.generation import Generator
from engine.sampling import GREEDY
from engine.sequence import RequestOptions
from engine.stopping import StoppingCriteria
from services.common.config import QueueConfig
from services.common.jobs import JobQueue, JobSpec, QueueFull
from services.common.keys import Keys


@pytest.fixture
def queue(redis_client, key_prefix):
    # a long reader lease: the SIGKILL test reads its four jobs one after the other
    config = QueueConfig(heartbeat_ms=300, claim_idle_ms=1500, reader_lease_ms=120_000)
    q = JobQueue(redis_client, Keys(key_prefix), config)
    q.ensure_group()
    return q


def submit(queue, prompt_ids, options):
    job_id = uuid.uuid4().hex
    queue.submit(JobSpec.from_options(job_id, prompt_ids, options))
    return job_id


def raw_events(queue, job_id):
    """Every entry of the job's output stream, as written (no de-duplication)."""
    from services.common.jobs import OutputEvent
    return [OutputEvent.parse(raw) for _, raw in queue.redis.xrange(queue.keys.job_output(job_id))]


def test_a_job_runs_on_a_worker(queue, spawn_worker, llm):
    spawn_worker()
    ids = llm.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    job = submit(queue, ids, RequestOptions(GREEDY, StoppingCriteria(48)))
    events = list(queue.events(job, timeout_s=60))
    assert "".join(e.text for e in events) == "The capital of France is Paris."
    assert events[-1].finish_reason == "eos" and events[-1].prompt_tokens == len(ids)
    assert queue.outstanding() == 0


def test_a_second_worker_reuses_the_kv_blocks_the_first_wrote(queue, spawn_worker, llm):
    ids = llm.encode("The history of the city goes back many centuries, to a small settlement on the river. " * 6)
    options = RequestOptions(GREEDY, StoppingCriteria(16, ignore_eos=True))
    first = spawn_worker()
    events_1 = list(queue.events(submit(queue, ids, options), timeout_s=60))
    assert events_1[0].cached_prompt_tokens == 0
    time.sleep(0.5)                                          # its background export reaches Redis
    first.send_signal(signal.SIGTERM)
    first.wait(30)
    spawn_worker()
    events_2 = list(queue.events(submit(queue, ids, options), timeout_s=60))
    assert events_2[0].cached_prompt_tokens == (len(ids) - 1) // 16 * 16
    assert [e.token_id for e in events_2] == [e.token_id for e in events_1]


def test_sigkill_mid_generation_every_job_completes_exactly_once(queue, spawn_worker, llm, redis_client):
    prompts = [llm.encode(p) for p in ("Once upon a time", "The capital of France is", "def fibonacci(n):",
                                       "Large language models are")]
    options = RequestOptions(GREEDY, StoppingCriteria(40, ignore_eos=True))
    expected = [[e.token_id for e in Generator(llm.model, llm.tokenizer, 256).generate(p, options)] for p in prompts]
    a = spawn_worker()
    jobs = [submit(queue, p, options) for p in prompts]
    deadline = time.monotonic() + 60
    while not all(len(raw_events(queue, j)) >= 3 for j in jobs):         # all four mid-generation
        assert time.monotonic() < deadline
        time.sleep(0.02)
    owner = redis_client.get(queue.keys.job_owner(jobs[0])).decode()
    assert a.worker_key.endswith(owner)
    spawn_worker()                                                       # the survivor
    a.send_signal(signal.SIGKILL)
    a.wait()
    for job, want in zip(jobs, expected, strict=True):
        events = list(queue.events(job, timeout_s=90))
        assert [e.token_id for e in events] == want
        written = raw_events(queue, job)
        assert [e.index for e in written] == list(range(len(want)))     # no gap, no duplicate
        assert sum(e.is_final for e in written) == 1
    assert queue.outstanding() == 0


def test_cancel_stops_within_a_step_and_frees_the_blocks(queue, spawn_worker, llm, redis_client):
    worker = spawn_worker()
    ids = llm.encode("Once upon a time")
    job = submit(queue, ids, RequestOptions(GREEDY, StoppingCriteria(400, ignore_eos=True)))
    events = queue.events(job, timeout_s=60)
    for _ in range(5):
        next(events)
    queue.cancel(job)
    cancelled_at = time.monotonic()
    rest = list(events)
    assert rest[-1].finish_reason == "cancelled" and rest[-1].token_id is None
    assert time.monotonic() - cancelled_at < 1.0 and len(rest) <= 4
    time.sleep(0.8)                                                      # a heartbeat publishes the pool
    info = {k.decode(): v.decode() for k, v in redis_client.hgetall(worker.worker_key).items()}
    assert info["kv_blocks_free"] == info["kv_blocks"] and info["running"] == "0"


def test_the_queue_is_bounded(redis_client, key_prefix):
    queue = JobQueue(redis_client, Keys(key_prefix), QueueConfig(max_queue_len=2))
    queue.ensure_group()
    submit(queue, [1, 2, 3], RequestOptions())
    submit(queue, [1, 2, 3], RequestOptions())
    with pytest.raises(QueueFull, match="2 jobs"):
        submit(queue, [1, 2, 3], RequestOptions())
    assert queue.outstanding() == 2


def test_a_job_the_engine_refuses_is_answered_with_an_error(queue, spawn_worker):
    spawn_worker()
    job = submit(queue, [5, 10**9], RequestOptions())          # a token id no vocabulary has
    events = list(queue.events(job, timeout_s=60))
    assert events[-1].finish_reason == "error" and events[-1].error_code == "invalid_argument"
    assert "out of range" in events[-1].error and queue.outstanding() == 0


def test_a_job_carries_every_request_option():
    """What the front-end decided reaches the worker unchanged (JSON round trip of the job)."""
    from engine.sampling import SamplingParams
    from engine.speculation import SpeculationParams
    options = RequestOptions(SamplingParams(temperature=0.7, top_p=0.9, seed=3), StoppingCriteria(12, ("x",)),
                             True, 2, False, SpeculationParams(num_draft_tokens=6, min_ngram=3))
    spec = JobSpec.from_json(JobSpec.from_options("j", [1, 2, 3], options).to_json())
    assert spec.options() == options


def test_a_job_nobody_reads_is_cancelled_when_its_reader_lease_lapses(redis_client, key_prefix, spawn_worker, llm):
    lapsing = JobQueue(redis_client, Keys(key_prefix), QueueConfig(heartbeat_ms=300, claim_idle_ms=1500,
                                                                   reader_lease_ms=1000))
    lapsing.ensure_group()
    spawn_worker()
    job = submit(lapsing, llm.encode("Once upon a time"), RequestOptions(GREEDY, StoppingCriteria(2000,
                                                                                                 ignore_eos=True)))
    deadline = time.monotonic() + 60
    while not any(e.is_final for e in raw_events(lapsing, job)):      # nobody calls events(): no renewal
        assert time.monotonic() < deadline, "the unread job was not cancelled"
        time.sleep(0.1)
    written = raw_events(lapsing, job)
    assert written[-1].finish_reason == "cancelled" and len(written) < 2000
    assert lapsing.outstanding() == 0


def test_a_worker_busy_in_one_long_step_keeps_its_job(queue, spawn_worker, llm):
    """One engine step many times claim_idle_ms long (a 3,000-token prefill in one chunk on one
    thread): the worker's keepalive thread renews its heartbeat and the job meanwhile, so a second
    worker, up during that step, takes nothing over, and every event is written once."""
    slow = {"MESHLLM_THREADS": 1, "MESHLLM_MAX_NUM_BATCHED_TOKENS": 4096, "MESHLLM_KV_CACHE_MB": 256}
    spawn_worker(**slow)
    ids = llm.encode("The history of the city goes back many centuries, to a small settlement on the river. " * 170)
    assert len(ids) > 3000
    started = time.monotonic()
    job = submit(queue, ids, RequestOptions(GREEDY, StoppingCriteria(4, ignore_eos=True)))
    owner_key = queue.keys.job_owner(job)
    while queue.redis.get(owner_key) is None:
        assert time.monotonic() - started < 30, "no worker took the job"
        time.sleep(0.02)
    owners, done = {queue.redis.get(owner_key)}, threading.Event()

    def watch_owner():                                             # until the job ends (and its key goes)
        while not done.is_set():
            owners.add(queue.redis.get(owner_key))
            time.sleep(0.02)
    watcher = threading.Thread(target=watch_owner)
    watcher.start()
    spawn_worker(**slow)                                           # registers while the long step runs
    events = list(queue.events(job, timeout_s=180))
    first_token_s = time.monotonic() - started
    done.set()
    watcher.join()
    assert first_token_s > 3 * queue.config.claim_idle_ms / 1000, "the step was not long enough to test this"
    assert len(owners - {None}) == 1                               # never taken over
    written = raw_events(queue, job)
    assert [e.index for e in written] == list(range(len(written))) and len(events) == 4
    assert queue.outstanding() == 0


def test_a_worker_takes_shared_jobs_only_while_its_next_step_has_budget_for_them(
        queue, redis_server, key_prefix, llm):
    """Jobs a worker could only queue stay in the shared stream, where another worker with room can
    start them at once (an in-process worker on the real Redis, a 32-token step budget)."""
    from services.common.config import RedisConfig, WorkerConfig
    from services.worker.worker import Worker
    options = RequestOptions(GREEDY, StoppingCriteria(8, ignore_eos=True))
    worker = Worker(llm, RedisConfig(redis_server.url, key_prefix), queue.config,
                    WorkerConfig(kv_cache_mb=64, max_num_seqs=8, max_num_batched_tokens=32, share_kv=False))
    prompts = [llm.encode(f"Town {k} traded grain, salt and cloth with the harbor. " * 3) for k in range(4)]
    assert min(map(len, prompts)) > 32                   # no prefix in common, each longer than a step
    try:
        worker._connect()
        jobs = [submit(queue, prompt, options) for prompt in prompts]
        worker.run_once()              # idle: takes the first; the step prefills 32 of its tokens
        assert list(worker.jobs) == jobs[:1]
        worker.run_once()              # the rest of its prompt leaves room: one more, whose prompt fills it
        assert list(worker.jobs) == jobs[:2]
        queue.ensure_group("other")
        taken = queue.read_shared("other", 8)             # another worker finds the other two
        assert [spec.job_id for _, spec in taken] == jobs[2:]
    finally:
        worker.engine.close()


def test_a_read_returns_every_entry_it_takes_routed_ones_first(queue):
    """read_new takes the worker's routed jobs first, then the shared stream's for the rest of
    `count`; an entry it reads is never dropped (it would wait out claim_idle_ms unstarted)."""
    from services.common.jobs import Route
    keys = queue.keys
    queue.ensure_group("w")
    queue.redis.hset(keys.worker("w"), mapping={"running": 0})      # alive: routing to it is allowed
    routed = [queue.submit(JobSpec(uuid.uuid4().hex, [1, 2]), Route("w")) for _ in range(3)]
    shared = [queue.submit(JobSpec(uuid.uuid4().hex, [1, 2])) for _ in range(3)]
    assert {e.stream for e in routed} == {keys.route("w")} and {e.stream for e in shared} == {keys.jobs}
    first = queue.read_new("w", 4, 0)
    assert [e.entry_id for e, _ in first] == [e.entry_id for e in routed] + [shared[0].entry_id]
    pending = queue.redis.xpending(keys.jobs, "workers")["pending"] + \
        queue.redis.xpending(keys.route("w"), "workers")["pending"]
    assert pending == 4                                   # exactly what it returned
    rest = queue.read_new("w", 10, 0)
    assert [e.entry_id for e, _ in rest] == [e.entry_id for e in shared[1:]]


def test_a_worker_that_claims_its_own_running_job_back_keeps_running_it(queue, redis_server, key_prefix, llm):
    """A Redis Cluster failover under load: the worker's heartbeat renews its jobs, then its next
    command (the stale-job claim) meets the dead primary, and the client retries it on the new one
    seconds later, when the worker's own entries are idle past claim_idle_ms. The claim hands the
    worker jobs it is running; they go on where they are, each token written once, instead of
    failing as duplicate requests (INVALID_ARGUMENT to their callers)."""
    from services.common.config import RedisConfig, WorkerConfig
    from services.worker.worker import Worker
    worker = Worker(llm, RedisConfig(redis_server.url, key_prefix), queue.config,
                    WorkerConfig(kv_cache_mb=64, max_num_seqs=4, share_kv=False))
    try:
        worker._connect()
        options = RequestOptions(GREEDY, StoppingCriteria(12, ignore_eos=True))
        job = submit(queue, llm.encode("Once upon a time"), options)
        while not raw_events(queue, job):
            worker.run_once()
        entry = worker.jobs[job].entry
        # the entry as the new primary has it: pending on this worker, idle far past claim_idle_ms
        queue.redis.xclaim(entry.stream, "workers", worker.worker_id, 0, [entry.entry_id], idle=60_000, justid=True)
        claimed = queue.claim_stale(worker.worker_id, worker._room())
        assert [spec.job_id for _, spec in claimed] == [job]
        for claimed_entry, spec in claimed:                   # what run_once does with the claim
            worker._start(claimed_entry, spec, claimed=True)
        assert job in worker.jobs
        while job in worker.jobs:
            worker.run_once()
        written = raw_events(queue, job)
        assert [e.error for e in written if e.error] == []
        assert [e.index for e in written] == list(range(len(written))) and written[-1].finish_reason == "length"
        assert sum(e.token_id is not None for e in written) == 12
        assert queue.outstanding() == 0
    finally:
        worker.engine.close()


def test_a_worker_with_a_float16_kv_cache_answers_as_the_float32_one_does(queue, spawn_worker, llm):
    """MESHLLM_KV_CACHE_DTYPE=float16: the worker keeps its KV cache in halves and gives the same
    greedy answer; an unknown type is refused by name before the model loads."""
    from services.common.config import ConfigError, WorkerConfig, from_sources
    with pytest.raises(ConfigError, match="kv_cache_dtype must be float32 or float16"):
        from_sources(WorkerConfig, env={"MESHLLM_KV_CACHE_DTYPE": "float8"})
    # its warm-up compiles the float16 decoder stack unless an earlier test left it in the cache
    worker = spawn_worker(register_timeout_s=600, MESHLLM_KV_CACHE_DTYPE="float16")
    assert queue.redis.hget(worker.worker_key, "kv_cache_dtype") == b"float16"      # its heartbeat says so
    ids = llm.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    events = list(queue.events(submit(queue, ids, RequestOptions(GREEDY, StoppingCriteria(48))), timeout_s=60))
    assert "".join(e.text for e in events) == "The capital of France is Paris."
