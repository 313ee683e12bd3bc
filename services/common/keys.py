"""Every Redis key meshllm uses, in one place (docs/redis.md describes each)."""
from __future__ import annotations


class Keys:
    def __init__(self, prefix: str = "meshllm:"):
        self.prefix = prefix

    # ---- generation jobs
    @property
    def jobs(self) -> str:
        """Stream of submitted jobs (consumer group `workers`); an entry lives until its job ends."""
        return f"{self.prefix}jobs"

    def job_output(self, job_id: str) -> str:
        """Stream of a job's token events, in order; expires output_ttl_s after its last write."""
        return f"{self.prefix}job:{job_id}:out"

    def job_owner(self, job_id: str) -> str:
        """The worker that may write the job's output (fencing a worker that lost the job)."""
        return f"{self.prefix}job:{job_id}:owner"

    def job_request(self, job_id: str) -> str:
        """Set when a job is accepted; makes request ids unique while the job's output lives."""
        return f"{self.prefix}job:{job_id}:req"

    def job_cancel(self, job_id: str) -> str:
        """Set when a client cancels; the owning worker checks it every step."""
        return f"{self.prefix}job:{job_id}:cancel"

    def worker(self, worker_id: str) -> str:
        """Hash describing a live worker (model, load); expires unless renewed."""
        return f"{self.prefix}worker:{worker_id}"

    @property
    def workers_pattern(self) -> str:
        return f"{self.prefix}worker:*"

    # ---- documents (the retrieval index; no TTL: never evicted)
    def document(self, doc_id: str) -> str:
        """Hash: source, metadata (JSON), content_hash, chunk ids (JSON), ingested_at."""
        return f"{self.prefix}doc:{doc_id}"

    @property
    def documents(self) -> str:
        """Set of every document id."""
        return f"{self.prefix}docs"

    def chunk(self, chunk_id: str) -> str:
        """Hash: doc_id, index, source, start, end, text, embedding (float32 bytes)."""
        return f"{self.prefix}chunk:{chunk_id}"

    @property
    def chunks(self) -> str:
        """Set of every chunk id."""
        return f"{self.prefix}chunks"

    def content(self, content_hash: str) -> str:
        """The document id holding this exact text (content-hash dedupe)."""
        return f"{self.prefix}content:{content_hash}"

    @property
    def documents_version(self) -> str:
        """Incremented by every change to the documents: replicas reload their indexes."""
        return f"{self.prefix}docs:version"

    # ---- shared KV cache
    def kv_block(self, model_fingerprint: str, block_hash: bytes) -> str:
        """One full KV block (header + float32 keys and values), by model and chain hash."""
        return f"{self.prefix}kv:{model_fingerprint}:{block_hash.hex()}"


WORKER_GROUP = "workers"
