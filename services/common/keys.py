"""Every Redis key meshllm uses, in one place (docs/redis.md describes each).

The layout works on a Redis Cluster: keys that one command, script or transaction touches together
share a hash tag. The job queue (the jobs stream, the routed streams, each job's output, owner,
cancel and reader keys, the workers' hashes) is tagged `{jobs}`, so the submit and fenced-write
scripts stay atomic; the document index is tagged `{docs}`, so one document's write is one
MULTI/EXEC. KV blocks, the bulk of the memory, carry no tag: they spread over every slot, and a
batch of them is read one MGET per slot (redis_client.mget).
"""
from __future__ import annotations

QUEUE_TAG = "{jobs}"
DOCUMENTS_TAG = "{docs}"


class Keys:
    def __init__(self, prefix: str = "meshllm:"):
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"key prefix {prefix!r}: braces would change the keys' hash tags")
        self.prefix = prefix
        self.queue = prefix + QUEUE_TAG
        self.docs = prefix + DOCUMENTS_TAG

    # ---- generation jobs
    @property
    def jobs(self) -> str:
        """Stream of submitted jobs (consumer group `workers`); an entry lives until its job ends."""
        return f"{self.queue}:stream"

    def job_output(self, job_id: str) -> str:
        """Stream of a job's token events, in order; expires output_ttl_s after its last write."""
        return f"{self.queue}:job:{job_id}:out"

    def job_owner(self, job_id: str) -> str:
        """The worker that may write the job's output (fencing a worker that lost the job)."""
        return f"{self.queue}:job:{job_id}:owner"

    def job_request(self, job_id: str) -> str:
        """Set when a job is accepted; makes request ids unique while the job's output lives."""
        return f"{self.queue}:job:{job_id}:req"

    def job_cancel(self, job_id: str) -> str:
        """Set when a client cancels; the owning worker checks it every step."""
        return f"{self.queue}:job:{job_id}:cancel"

    def job_reader(self, job_id: str) -> str:
        """The reader's lease: renewed while someone reads the output; a lapsed one cancels the job."""
        return f"{self.queue}:job:{job_id}:reader"

    @property
    def outstanding(self) -> str:
        """How many jobs are queued or running (the bound max_queue_len applies to)."""
        return f"{self.queue}:outstanding"

    def route(self, worker_id: str) -> str:
        """Stream of the jobs routed to this worker (consumer group `workers`, as the shared one)."""
        return f"{self.queue}:route:{worker_id}"

    @property
    def routes(self) -> str:
        """Set of the worker ids that have a routed stream (a dead one's is served by the others)."""
        return f"{self.queue}:routes"

    def worker_blocks(self, worker_id: str) -> str:
        """Set of the chain hashes (16 bytes) of the KV blocks in this worker's prefix cache."""
        return f"{self.queue}:blocks:{worker_id}"

    def worker(self, worker_id: str) -> str:
        """Hash describing a live worker (model, load); expires unless renewed."""
        return f"{self.queue}:worker:{worker_id}"

    @property
    def workers_pattern(self) -> str:
        return f"{self.queue}:worker:*"

    # ---- documents (the retrieval index; no TTL: never evicted)
    def document(self, doc_id: str) -> str:
        """Hash: source, metadata (JSON), content_hash, chunk ids (JSON), ingested_at."""
        return f"{self.docs}:doc:{doc_id}"

    @property
    def documents(self) -> str:
        """Set of every document id."""
        return f"{self.docs}:ids"

    def chunk(self, chunk_id: str) -> str:
        """Hash: doc_id, index, source, start, end, text, embedding (float32 bytes)."""
        return f"{self.docs}:chunk:{chunk_id}"

    @property
    def chunks(self) -> str:
        """Set of every chunk id."""
        return f"{self.docs}:chunks"

    def content(self, content_hash: str) -> str:
        """The document id holding this exact text (content-hash dedupe)."""
        return f"{self.docs}:content:{content_hash}"

    @property
    def documents_version(self) -> str:
        """Incremented by every change to the documents: replicas reload their indexes."""
        return f"{self.docs}:version"

    # ---- shared KV cache
    def kv_block(self, model_fingerprint: str, block_hash: bytes) -> str:
        """One full KV block (header + float32 keys and values), by model and chain hash."""
        return f"{self.prefix}kv:{model_fingerprint}:{block_hash.hex()}"


WORKER_GROUP = "workers"
