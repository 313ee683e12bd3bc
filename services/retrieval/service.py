"""The Retrieval service (port 50052): ingest, hybrid search, Ask with citations, embeddings.

Documents, chunks and embeddings live in Redis; the search index is in memory, rebuilt from Redis
at start and whenever the documents' version moves. Embedding runs on the engine's encoder in a
worker thread (the kernels release the GIL), so the service keeps answering meanwhile. Ask calls
the Generation service and streams its answer with the sources it was given.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import grpc

from engine.encoder import SentenceEncoder
from engine.llm import LLM

from ..api import common_pb2, generation_pb2, generation_pb2_grpc, retrieval_pb2_grpc
from ..api import retrieval_pb2 as pb
from ..client import open_channel_async
from ..common.config import RetrievalConfig
from ..common.errors import InvalidRequest, ServiceError, unary
from ..common.errors import streaming as streaming_rpc
from ..common.metrics import METRICS
from .chunking import ChunkingConfig
from .index import SearchIndex, SearchMode, SearchSettings
from .prompt import NO_SOURCE_ANSWER, SOURCE_LABEL_STOP, answer_sources, build_prompt
from .relevance import AnswerabilityCheck
from .sections import headed_chunks
from .store import ChunkRecord, DocumentStore, chunk_id, content_hash, indexed_text

SERVICE = "meshllm.v1.Retrieval"
log = logging.getLogger("meshllm.retrieval")
_DOC_ID = re.compile(r"^[^\x00-\x1f]{1,256}$")
MAX_QUERY_CHARS = 4096
MAX_EMBED_TEXTS = 256


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServicer):
    def __init__(self, encoder: SentenceEncoder, llm: LLM, store: DocumentStore, config: RetrievalConfig):
        self.encoder = encoder
        self.llm = llm
        self.store = store
        self.config = config
        self.chunking = ChunkingConfig(config.chunk_tokens, config.overlap_tokens)
        self.search_settings = SearchSettings.of(config)
        self.index = SearchIndex(-1, [], encoder.dimensions, self.search_settings)
        self.answerability = AnswerabilityCheck(config.answerable_relevance, config.answerable_relevance_unknown_term)
        self._index_lock = asyncio.Lock()
        self._ingest_lock = asyncio.Lock()
        self._generation_channel = None

    # ------------------------------------------------------------------ index

    async def refresh_index(self) -> SearchIndex:
        """The index, rebuilt first if the documents changed since it was built."""
        if await self.store.version() == self.index.version:
            return self.index
        async with self._index_lock:
            version, records = await self.store.load_all(self.encoder.dimensions)
            if version != self.index.version:
                self.index = await asyncio.to_thread(SearchIndex, version, records, self.encoder.dimensions,
                                                         self.search_settings)
                log.info("index rebuilt: %d chunks (version %d)", len(records), version)
        return self.index

    async def embed(self, texts: list[str]):
        return await asyncio.to_thread(self.encoder.embed, texts)

    # ------------------------------------------------------------------ ingest

    def _check_document(self, doc) -> None:
        if not _DOC_ID.match(doc.id):
            raise InvalidRequest("document id: 1-256 characters, no control characters")
        if not doc.text.strip():
            raise InvalidRequest(f"document {doc.id!r} has no text")
        if len(doc.text) > self.config.max_document_chars:
            raise InvalidRequest(f"document {doc.id!r} has {len(doc.text)} characters; the limit is "
                                 f"{self.config.max_document_chars}")
        if len(doc.metadata) > 64 or any(len(k) > 256 or len(v) > 4096 for k, v in doc.metadata.items()):
            raise InvalidRequest(f"document {doc.id!r}: at most 64 metadata entries of 256/4096 characters")

    async def ingest(self, documents) -> pb.IngestResponse:
        if len(documents) > self.config.max_documents_per_request:
            raise InvalidRequest(f"{len(documents)} documents in one call; the limit is "
                                 f"{self.config.max_documents_per_request}")
        for doc in documents:
            self._check_document(doc)
        async with self._ingest_lock:                    # one ingest at a time per replica: ordered writes
            results, pending = [], []
            for doc in documents:
                source = doc.source or doc.id
                metadata = dict(doc.metadata)
                digest = content_hash(doc.text)
                existing = await self.store.document(doc.id)
                if existing and existing["content_hash"] == digest and existing["source"] == source \
                        and existing["metadata"] == _canonical(metadata):
                    results.append(pb.DocumentResult(id=doc.id, status=pb.INGEST_STATUS_UNCHANGED,
                                                     chunks=len(_json_list(existing["chunk_ids"]))))
                    continue
                holder = await self.store.holder_of(digest)
                if holder and holder != doc.id:
                    results.append(pb.DocumentResult(id=doc.id, status=pb.INGEST_STATUS_DUPLICATE,
                                                     duplicate_of=holder))
                    continue
                headed = headed_chunks(doc.text, source, self.encoder.token_offsets, self.chunking,
                                       self.config.contextual_headers)
                status = pb.INGEST_STATUS_REPLACED if existing else pb.INGEST_STATUS_ADDED
                pending.append((doc, source, metadata, digest, headed, status))
                results.append(None)
            vectors = await self.embed([indexed_text(context, c.text) for *_, headed, _ in pending
                                        for c, context in headed])
            added, row = 0, 0
            slots = iter(i for i, r in enumerate(results) if r is None)
            for doc, source, metadata, digest, headed, status in pending:
                records = [ChunkRecord(chunk_id(doc.id, c.index, c.text), doc.id, c.index, source, c.start, c.end,
                                       c.text, vectors[row + i], context=context)
                           for i, (c, context) in enumerate(headed)]
                row += len(headed)
                await self.store.put(doc.id, source, metadata, digest, records)
                results[next(slots)] = pb.DocumentResult(id=doc.id, status=status, chunks=len(records))
                added += len(records)
        docs, chunks_total = await self.store.count()
        return pb.IngestResponse(results=results, chunks_added=added, total_documents=docs, total_chunks=chunks_total)

    # ------------------------------------------------------------------ search

    def _search_args(self, query: str, top_k: int, mode: int, limit: int, default_k: int):
        if not query.strip():
            raise InvalidRequest("the query is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidRequest(f"the query has {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
        if top_k > limit:
            raise InvalidRequest(f"top_k is {top_k}; it must be between 1 and {limit}")
        if mode not in SearchMode._value2member_map_:
            raise InvalidRequest(f"unknown search mode {mode}")
        return top_k or default_k, SearchMode(mode)

    async def search(self, query: str, top_k: int, mode: SearchMode, sources: list[str], rpc: str = "Search"):
        started = time.perf_counter()
        index = await self.refresh_index()
        (vector,) = await self.embed([query])
        hits = index.search(query, vector, mode, top_k, sources or None)
        METRICS.retrieval_seconds.labels(rpc, mode.name.lower()).observe(time.perf_counter() - started)
        return hits

    # ------------------------------------------------------------------ RPCs

    @unary(SERVICE)
    async def Ingest(self, request, context):
        return await self.ingest(list(request.documents))

    @unary(SERVICE)
    async def IngestStream(self, request_iterator, context):
        batch, response = [], pb.IngestResponse()
        async for doc in request_iterator:
            batch.append(doc)
            if len(batch) == 32:
                _merge(response, await self.ingest(batch))
                batch = []
        if batch:
            _merge(response, await self.ingest(batch))
        docs, chunks_total = await self.store.count()
        response.total_documents, response.total_chunks = docs, chunks_total
        return response

    @unary(SERVICE)
    async def DeleteDocument(self, request, context):
        return pb.DeleteDocumentResponse(found=await self.store.delete(request.id))

    @unary(SERVICE)
    async def ListDocuments(self, request, context):
        limit = request.limit or 100
        if not 1 <= limit <= 1000:
            raise InvalidRequest(f"limit must be 1-1000, got {limit}")
        docs, total = await self.store.list(limit + 1, request.after)     # one more: is there a next page?
        response = pb.ListDocumentsResponse(total_documents=total)
        if len(docs) > limit:
            docs = docs[:limit]
            response.next_after = docs[-1][0]
        for doc_id, fields in docs:
            response.documents.append(pb.DocumentInfo(
                id=doc_id, source=fields.get("source", ""), chunks=len(json.loads(fields.get("chunk_ids", "[]"))),
                ingested_at=float(fields.get("ingested_at", 0) or 0),
                metadata=json.loads(fields.get("metadata", "{}"))))
        return response

    @unary(SERVICE)
    async def Search(self, request, context):
        top_k, mode = self._search_args(request.query, request.top_k, request.mode, 50, 5)
        hits = await self.search(request.query, top_k, mode, list(request.sources))
        return pb.SearchResponse(hits=[_hit_pb(h) for h in hits])

    @streaming_rpc(SERVICE)
    async def Ask(self, request, context):
        if not self.llm.has_chat_template:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, ASK_NEEDS_CHAT_MODEL.format(self.llm.config.name))
        top_k, mode = self._search_args(request.question, request.top_k, request.mode, 20,
                                          self.config.ask_sources)
        if request.max_new_tokens > 2048:
            raise InvalidRequest("max_new_tokens must be at most 2048")
        found = await self.search(request.question, top_k, mode, list(request.sources), rpc="Ask")
        if request.HasField("min_relevance"):            # the caller's floor replaces the server's checks
            hits = [h for h in found if h.dense_score >= request.min_relevance]
        else:
            hits = [h for h in found if h.dense_score >= self.config.min_relevance]
            if not self.answerability.admits(request.question, hits, self.index):
                hits = []
        if not hits:
            yield pb.AskResponse(text=NO_SOURCE_ANSWER, answered_from_sources=False,
                                 finish_reason=common_pb2.FINISH_REASON_EOS)
            return
        max_new = request.max_new_tokens or 256
        prompt = build_prompt(self.llm, request.question, hits, self.config.ask_prompt_tokens)
        citations = [_citation(n, h) for n, h in enumerate(prompt.sources, start=1)]
        yield pb.AskResponse(citations=citations, answered_from_sources=True)
        # greedy, and no n-gram twice: a greedy 0.5B model can list "- Compound statements" 60 times
        sampling = generation_pb2.SamplingParams(temperature=0.0, no_repeat_ngram_size=self.config.ask_no_repeat_ngram)
        if request.HasField("sampling"):
            sampling.CopyFrom(request.sampling)
        speculation = (request.speculation if request.HasField("speculation")
                       else generation_pb2.Speculation(num_draft_tokens=self.config.ask_draft_tokens))
        generate = generation_pb2.GenerateRequest(
            chat=generation_pb2.Chat(messages=[common_pb2.ChatMessage(**m) for m in prompt.messages]),
            sampling=sampling, stopping=generation_pb2.StoppingCriteria(max_new_tokens=max_new,
                                                                         stop_sequences=[SOURCE_LABEL_STOP]),
            speculation=speculation)
        answer = []
        stub = generation_pb2_grpc.GenerationStub(self._generation())
        async for chunk in stub.GenerateStream(generate, timeout=context.time_remaining()):
            answer.append(chunk.text)
            if chunk.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED:
                yield pb.AskResponse(text=chunk.text, answered_from_sources=True)
                continue
            cited = await self.attribute("".join(answer), prompt.sources)
            for c in citations:
                c.cited = c.number in cited
            yield pb.AskResponse(text=chunk.text, citations=citations, answered_from_sources=True,
                                 finish_reason=chunk.finish_reason, usage=chunk.usage)

    async def attribute(self, answer: str, sources) -> set[int]:
        """The sources (numbered from 1) an answer draws on (prompt.answer_sources)."""
        return await asyncio.to_thread(answer_sources, answer, sources, self.encoder.embed)

    @unary(SERVICE)
    async def Embed(self, request, context):
        if not request.texts:
            raise InvalidRequest("no texts to embed")
        if len(request.texts) > MAX_EMBED_TEXTS:
            raise InvalidRequest(f"at most {MAX_EMBED_TEXTS} texts per call")
        if any(len(t) > MAX_QUERY_CHARS * 16 for t in request.texts):
            raise InvalidRequest(f"a text is longer than {MAX_QUERY_CHARS * 16} characters")
        vectors = await self.embed(list(request.texts))
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=v.tolist()) for v in vectors],
                                dimensions=self.encoder.dimensions)

    @unary(SERVICE)
    async def Stats(self, request, context):
        docs, chunks = await self.store.count()
        return pb.StatsResponse(documents=docs, chunks=chunks, embedding_model="all-MiniLM-L6-v2",
                                dimensions=self.encoder.dimensions)

    def _generation(self):
        if self._generation_channel is None:
            self._generation_channel = open_channel_async(self.config.generation_address,
                                                          self.config.generation_tls_ca or None,
                                                          self.config.generation_api_key or None)
        return self._generation_channel

    async def ready(self) -> bool:
        await self.store.redis.ping()
        await self.refresh_index()
        return True


def _canonical(metadata: dict) -> str:
    return json.dumps(metadata, sort_keys=True)


def _json_list(text: str) -> list:
    return json.loads(text or "[]")


def _merge(total: pb.IngestResponse, part: pb.IngestResponse) -> None:
    total.results.extend(part.results)
    total.chunks_added += part.chunks_added


def _hit_pb(hit) -> pb.SearchHit:
    r = hit.record
    return pb.SearchHit(chunk_id=r.chunk_id, document_id=r.doc_id, source=r.source, text=r.text, score=hit.score,
                        lexical_score=hit.lexical_score, dense_score=hit.dense_score, lexical_rank=hit.lexical_rank,
                        dense_rank=hit.dense_rank, start=r.start, end=r.end,
                        metadata={str(k): str(v) for k, v in r.metadata.items()})


def _citation(number: int, hit) -> pb.Citation:
    r = hit.record
    snippet = r.text if len(r.text) <= 240 else r.text[:237].rstrip() + "..."
    return pb.Citation(number=number, chunk_id=r.chunk_id, document_id=r.doc_id, source=r.source, snippet=snippet,
                       score=hit.score)


ASK_NEEDS_CHAT_MODEL = ("Ask needs an instruct model with a chat template, and {} is a base model without one: "
                        "serve Retrieval with an instruct model, e.g. --model qwen2.5-coder-0.5b-instruct")


async def run(server_config, redis_config, retrieval_config: RetrievalConfig, model_path: str | None) -> None:
    from ..common.grpc_server import serve
    from ..common.keys import Keys
    from ..common.redis_client import connect

    llm = LLM.load(model_path or None)             # first: a missing model fails before the encoder warms up
    if not llm.has_chat_template:
        log.warning(ASK_NEEDS_CHAT_MODEL.format(llm.config.name or model_path))
    encoder = SentenceEncoder.load()
    encoder.warm_up()
    client = connect(redis_config.redis_url, asyncio=True, max_connections=128, socket_connect_timeout=2)
    store = DocumentStore(client, Keys(redis_config.key_prefix))
    await store.migrate_legacy_keys()
    servicer = RetrievalServicer(encoder, llm, store, retrieval_config)
    await serve(server_config, [SERVICE], lambda s: retrieval_pb2_grpc.add_RetrievalServicer_to_server(servicer, s),
                servicer.ready)

