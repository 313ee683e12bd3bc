"""Retrieval: chunking logic, and the Retrieval service over real gRPC with a real Redis, the real
encoder, the Generation service and a worker running the real model."""
import uuid

import grpc
import numpy as np
import pytest

from engine.encoder import SentenceEncoder
from harness.mesh import Mesh, channel
from services.api import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.chunking import ChunkingConfig, chunk_text
from services.retrieval.corpus import pydoc_topics
from services.retrieval.prompt import NO_SOURCE_ANSWER

ST = retrieval_pb2


# ------------------------------------------------------------------------------ chunking (pure logic)

def words_offsets(text):
    """A stand-in tokenizer for the logic: one token per word."""
    import re
    return [m.span() for m in re.finditer(r"\S+", text)]


def test_chunks_are_exact_slices_with_overlap():
    text = " ".join(f"w{i}" for i in range(100))
    chunks = chunk_text(text, words_offsets, ChunkingConfig(chunk_tokens=20, overlap_tokens=5))
    assert [c.tokens for c in chunks] == [20, 20, 20, 20, 20, 20, 10]
    for c in chunks:
        assert text[c.start:c.end] == c.text
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start < a.end                                   # they overlap
        assert len(words_offsets(text[b.start:a.end])) == 5
    assert chunks[0].start == 0 and chunks[-1].end == len(text)  # every token is in some chunk


def test_chunks_end_at_sentence_breaks_when_one_is_near():
    text = ("Alpha beta gamma delta. " * 3 + "Epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
            "sigma tau upsilon phi chi psi omega.")
    chunks = chunk_text(text, words_offsets, ChunkingConfig(chunk_tokens=16, overlap_tokens=2))
    assert chunks[0].text.endswith(".") and chunks[0].tokens <= 16


def test_short_and_empty_documents():
    short = chunk_text("just a few words", words_offsets, ChunkingConfig(20, 4))
    assert [c.text for c in short] == ["just a few words"]
    assert chunk_text("   \n ", words_offsets, ChunkingConfig(20, 4)) == []
    with pytest.raises(ValueError):
        ChunkingConfig(chunk_tokens=10, overlap_tokens=6)


def test_chunks_fit_the_encoder():
    encoder = SentenceEncoder.load()
    _, text, _, _ = next(t for t in pydoc_topics() if t[0] == "pydoc:specialnames")
    chunks = chunk_text(text, encoder.token_offsets, ChunkingConfig(160, 32))
    assert len(chunks) > 20 and max(c.tokens for c in chunks) <= 160
    assert max(len(ids) for ids in encoder.token_ids([c.text for c in chunks])) <= 162      # with [CLS] [SEP]


# ------------------------------------------------------------------------------ the service

TOPICS = ("with", "yield", "try", "lambda", "global", "assert")


@pytest.fixture(scope="module")
def mesh(redis_server):
    m = Mesh(redis_server.url, f"r{uuid.uuid4().hex[:8]}:")
    m.generation = m.service("generation")
    m.retrieval = m.service("retrieval", MESHLLM_GENERATION_ADDRESS=m.generation.address)
    m.worker()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def stub(mesh):
    with channel(mesh.retrieval) as ch:
        s = retrieval_pb2_grpc.RetrievalStub(ch)
        docs = [ST.Document(id=i, text=t, source=s_, metadata=m) for i, t, s_, m in pydoc_topics()
                if s_ in TOPICS]
        reply = s.Ingest(ST.IngestRequest(documents=docs))
        assert [r.status for r in reply.results] == [ST.INGEST_STATUS_ADDED] * len(TOPICS)
        yield s


def test_ingest_is_idempotent_and_dedupes(stub):
    with_doc = next(ST.Document(id=i, text=t, source=s, metadata=m) for i, t, s, m in pydoc_topics() if s == "with")
    again = stub.Ingest(ST.IngestRequest(documents=[with_doc]))
    assert again.results[0].status == ST.INGEST_STATUS_UNCHANGED and again.chunks_added == 0
    copy = ST.Document(id="copy-of-with", text=with_doc.text, source="elsewhere")
    dup = stub.Ingest(ST.IngestRequest(documents=[copy]))
    assert dup.results[0].status == ST.INGEST_STATUS_DUPLICATE and dup.results[0].duplicate_of == "pydoc:with"
    note = ST.Document(id="note", text="The tungsten filament glows at 3000 kelvin.", source="notes")
    assert stub.Ingest(ST.IngestRequest(documents=[note])).results[0].status == ST.INGEST_STATUS_ADDED
    note.text = "The tungsten filament glows at 3400 kelvin."
    replaced = stub.Ingest(ST.IngestRequest(documents=[note]))
    assert replaced.results[0].status == ST.INGEST_STATUS_REPLACED and replaced.results[0].chunks == 1
    hits = stub.Search(ST.SearchRequest(query="tungsten filament", top_k=3, sources=["notes"])).hits
    assert [h.text for h in hits] == ["The tungsten filament glows at 3400 kelvin."]
    assert stub.DeleteDocument(ST.DeleteDocumentRequest(id="note")).found
    assert not stub.Search(ST.SearchRequest(query="tungsten filament", sources=["notes"])).hits
    stats = stub.Stats(ST.StatsRequest())
    assert stats.documents == len(TOPICS) and stats.dimensions == 384


def test_list_documents_pages_through_every_id(stub):
    total = stub.Stats(ST.StatsRequest()).documents
    seen, after = [], ""
    while True:
        page = stub.ListDocuments(ST.ListDocumentsRequest(limit=7, after=after))
        assert page.total_documents == total and len(page.documents) <= 7
        seen += [d.id for d in page.documents]
        if not page.next_after:
            break
        after = page.next_after
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == total
    (with_doc,) = [d for d in stub.ListDocuments(ST.ListDocumentsRequest(limit=1000)).documents if d.id == "pydoc:with"]
    assert with_doc.source == "with" and with_doc.chunks >= 1 and with_doc.ingested_at > 1.7e9
    with pytest.raises(grpc.RpcError) as e:
        stub.ListDocuments(ST.ListDocumentsRequest(limit=5000))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("mode", [ST.SEARCH_MODE_LEXICAL, ST.SEARCH_MODE_DENSE, ST.SEARCH_MODE_HYBRID])
def test_search_modes_find_the_topic(stub, mode):
    query = "context manager __enter__ __exit__ with statement"
    hits = stub.Search(ST.SearchRequest(query=query, top_k=3, mode=mode)).hits
    assert hits[0].source == "with"
    if mode == ST.SEARCH_MODE_LEXICAL:
        assert all(h.lexical_rank for h in hits) and hits[0].score == hits[0].lexical_score
    if mode == ST.SEARCH_MODE_DENSE:
        assert hits[0].score == pytest.approx(hits[0].dense_score) and hits[0].dense_rank == 1
    if mode == ST.SEARCH_MODE_HYBRID:
        # the fused score, best first, of a chunk both rankings put near the top
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert 1 <= hits[0].lexical_rank <= 5 and 1 <= hits[0].dense_rank <= 5


@pytest.mark.parametrize("query", ["?", "!!", "$"])
def test_a_query_without_lexical_words_is_searched_densely(stub, query):
    """Found by the fuzzer: bm25s raised IndexError on a query with no lexical token (INTERNAL)."""
    assert not stub.Search(ST.SearchRequest(query=query, top_k=3, mode=ST.SEARCH_MODE_LEXICAL)).hits
    hybrid = stub.Search(ST.SearchRequest(query=query, top_k=3)).hits
    assert len(hybrid) == 3 and all(h.lexical_rank == 0 and h.dense_rank for h in hybrid)


def test_dense_search_finds_a_paraphrase_and_filters_by_source(stub):
    hits = stub.Search(ST.SearchRequest(query="declare that a name refers to the module-level variable", top_k=1,
                                        mode=ST.SEARCH_MODE_DENSE)).hits
    assert hits[0].source == "global" and hits[0].dense_score > 0.4
    only = stub.Search(ST.SearchRequest(query="What does the with statement do?", top_k=5, sources=["try"])).hits
    assert only and {h.source for h in only} == {"try"}


def test_the_index_is_rebuilt_from_redis_after_a_restart(mesh, stub):
    query = ST.SearchRequest(query="anonymous function expression", top_k=5)
    before = [(h.chunk_id, round(h.score, 6)) for h in stub.Search(query).hits]
    mesh.retrieval = mesh.restart(mesh.retrieval)
    with channel(mesh.retrieval) as ch:
        after = [(h.chunk_id, round(h.score, 6)) for h in retrieval_pb2_grpc.RetrievalStub(ch).Search(query).hits]
    assert before and after == before


def ask(mesh, question, **kw):
    with channel(mesh.retrieval) as ch:
        return list(retrieval_pb2_grpc.RetrievalStub(ch).Ask(ST.AskRequest(question=question, **kw), timeout=120))


def test_ask_answers_from_the_chunk_that_holds_the_answer(mesh):
    messages = ask(mesh, "What does the with statement do?", max_new_tokens=48)
    first, last = messages[0], messages[-1]
    assert first.answered_from_sources and first.citations and not first.text
    answer = "".join(m.text for m in messages)
    assert "context manager" in answer
    assert first.citations[0].source == "with" and first.citations[0].number == 1
    assert last.finish_reason != 0 and last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 100
    cited = [c for c in last.citations if c.cited]
    assert cited and cited[0].source in ("with", "context-managers")
    assert all(c.snippet and c.chunk_id for c in last.citations)


def test_ask_says_so_when_no_source_is_relevant(mesh):
    messages = ask(mesh, "What is the boiling point of liquid nitrogen in kelvin?")
    assert len(messages) == 1 and not messages[0].answered_from_sources
    assert messages[0].text == NO_SOURCE_ANSWER and not messages[0].citations


def test_embed_matches_the_encoder(stub):
    reply = stub.Embed(ST.EmbedRequest(texts=["The cat sits on the mat.", "Use open() to read files."]))
    ours = SentenceEncoder.load().embed(["The cat sits on the mat.", "Use open() to read files."])
    assert reply.dimensions == 384
    np.testing.assert_allclose([e.values for e in reply.embeddings], ours, atol=1e-6)


@pytest.mark.parametrize("call,message", [
    (lambda s: s.Search(ST.SearchRequest(query="")), "query is empty"),
    (lambda s: s.Search(ST.SearchRequest(query="with", top_k=51)), "top_k is 51"),
    (lambda s: list(s.Ask(ST.AskRequest(question=""))), "query is empty"),
    (lambda s: list(s.Ask(ST.AskRequest(question="with?", top_k=21))), "top_k is 21"),
    (lambda s: s.Ingest(ST.IngestRequest(documents=[ST.Document(id="big", text="x " * 1_100_000)])),
     "the limit is 2000000"),
    (lambda s: s.Ingest(ST.IngestRequest(documents=[ST.Document(id="", text="hello")])), "document id"),
    (lambda s: s.Ingest(ST.IngestRequest(documents=[ST.Document(id="empty", text="  ")])), "has no text"),
    (lambda s: s.Embed(ST.EmbedRequest(texts=[])), "no texts"),
    (lambda s: list(s.Ask(ST.AskRequest(question="with?", max_new_tokens=5000))), "max_new_tokens"),
])
def test_bad_inputs_are_invalid_argument(stub, call, message):
    with pytest.raises(grpc.RpcError) as e:
        call(stub)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details(), e.value.details()


def test_ask_without_a_generation_service_is_unavailable(redis_server):
    m = Mesh(redis_server.url, f"u{uuid.uuid4().hex[:8]}:")
    try:
        retrieval = m.service("retrieval", MESHLLM_GENERATION_ADDRESS="127.0.0.1:1")
        with channel(retrieval) as ch:
            s = retrieval_pb2_grpc.RetrievalStub(ch)
            s.Ingest(ST.IngestRequest(documents=[ST.Document(id="a", text="The with statement wraps a block.")]))
            with pytest.raises(grpc.RpcError) as e:
                list(s.Ask(ST.AskRequest(question="What does the with statement wrap?", min_relevance=0.0),
                           timeout=30))
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "Generation" in e.value.details()
    finally:
        m.stop()



def test_ask_on_a_base_model_is_failed_precondition_naming_the_fix(redis_server, installed_model):
    """Gemma 3 270M has no chat template: Ask says Retrieval needs an instruct model, before searching."""
    m = Mesh(redis_server.url, f"b{uuid.uuid4().hex[:8]}:")
    try:
        retrieval = m.service("retrieval", MESHLLM_GENERATION_ADDRESS="127.0.0.1:1",
                              MESHLLM_MODEL=str(installed_model("gemma-3-270m")))
        with channel(retrieval) as ch:
            with pytest.raises(grpc.RpcError) as e:
                list(retrieval_pb2_grpc.RetrievalStub(ch).Ask(ST.AskRequest(question="What does with do?"), timeout=30))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "base model" in e.value.details() and "qwen2.5-coder-0.5b-instruct" in e.value.details()
    finally:
        m.stop()
