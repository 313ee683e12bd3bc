"""The document collection over HTTP, in the style of the other routes: what the Ask page's
Documents tab calls (and any client that would rather not speak gRPC to Retrieval).

    POST   /v1/documents  {"documents": [{"id", "text", "source"?, "metadata"?}]}  -> each one's status
    GET    /v1/documents?limit=&after=                                          -> a page of documents
    DELETE /v1/documents/{id}                                                   -> {"id", "deleted": true}

Ingest, ListDocuments and DeleteDocument of the Retrieval service; its refusals keep their
status (a bad id or an empty text is a 400).
"""
from __future__ import annotations

import grpc
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ..api import retrieval_pb2
from .errors import OpenAIError, from_rpc_error
from .mesh import caller_metadata
from .schemas import _Body
from .streaming import unless_disconnected

router = APIRouter()

_STATUS = {retrieval_pb2.INGEST_STATUS_ADDED: "added", retrieval_pb2.INGEST_STATUS_REPLACED: "replaced",
           retrieval_pb2.INGEST_STATUS_UNCHANGED: "unchanged", retrieval_pb2.INGEST_STATUS_DUPLICATE: "duplicate"}


class DocumentBody(_Body):
    id: str = Field(..., min_length=1, max_length=256)
    text: str
    source: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class IngestBody(_Body):
    documents: list[DocumentBody] = Field(..., min_length=1)


async def _call(request: Request, method: str, message):
    mesh = request.app.state.mesh
    caller = caller_metadata(request.headers)
    try:
        return await unless_disconnected(request, getattr(mesh.retrieval, method)(
            message, timeout=mesh.timeout, metadata=caller))
    except grpc.RpcError as e:
        raise from_rpc_error(e, "Retrieval") from None


@router.post("/v1/documents")
async def ingest(body: IngestBody, request: Request):
    docs = [retrieval_pb2.Document(id=d.id, text=d.text, source=d.source or "", metadata=d.metadata)
            for d in body.documents]
    reply = await _call(request, "Ingest", retrieval_pb2.IngestRequest(documents=docs))
    return JSONResponse({
        "object": "list", "chunks_added": reply.chunks_added, "total_documents": reply.total_documents,
        "total_chunks": reply.total_chunks,
        "data": [{"id": r.id, "status": _STATUS.get(r.status, "unknown"), "chunks": r.chunks,
                  "duplicate_of": r.duplicate_of or None} for r in reply.results]})


@router.get("/v1/documents")
async def list_documents(request: Request, limit: int = Query(100, ge=1, le=1000), after: str = ""):
    reply = await _call(request, "ListDocuments", retrieval_pb2.ListDocumentsRequest(limit=limit, after=after))
    return JSONResponse({
        "object": "list", "total": reply.total_documents, "next_after": reply.next_after or None,
        "data": [{"id": d.id, "object": "document", "source": d.source, "chunks": d.chunks,
                  "ingested_at": d.ingested_at, "metadata": dict(d.metadata)} for d in reply.documents]})


@router.delete("/v1/documents/{doc_id:path}")
async def delete_document(doc_id: str, request: Request):
    reply = await _call(request, "DeleteDocument", retrieval_pb2.DeleteDocumentRequest(id=doc_id))
    if not reply.found:
        raise OpenAIError(404, f"no document {doc_id!r}", code="document_not_found", param="id")
    return JSONResponse({"id": doc_id, "object": "document.deleted", "deleted": True})
