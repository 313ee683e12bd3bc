"""The gateway's FastAPI application and its server (`meshllm serve openai`, port 8000).

Middleware, outermost first: metrics (every request, refused or not), guards (API key, body size,
concurrency), then FastAPI. Every error leaves in OpenAI's shape, request validation included
(400, not FastAPI's 422). /health answers 503 until every configured service reports SERVING.
With tracing on (services/common/tracing.py), FastAPI's own OpenTelemetry support gives every
request but /health a span, outside all middleware, and the gRPC calls it makes carry its context.
"""
from __future__ import annotations

import logging
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from ..common.config import OpenAIConfig, ServerConfig
from .documents import router as documents_router
from .errors import OpenAIError, from_rpc_error, from_validation
from .guards import OPEN_PATHS, Guards
from .mesh import Mesh
from .metrics import GatewayMetrics, MetricsMiddleware
from .routes import router
from .streaming import ClientGone

log = logging.getLogger("meshllm.openai")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
WEB = Path(__file__).resolve().parent / "web"          # the Ask page: plain HTML, CSS and a script


def create_app(server: ServerConfig, config: OpenAIConfig, metrics: GatewayMetrics | None = None) -> FastAPI:
    mesh = Mesh(config, server.max_message_mb, own_key=(server.keys or [None])[0])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await mesh.open()                # grpc.aio channels belong to the server's event loop
        try:
            yield
        finally:
            await mesh.close()

    # telemetry: one span per request (no spans for dependencies, endpoint, serialization); the
    # exporter is services/common/tracing.py's, never one FastAPI would set up from OTEL_* itself
    telemetry = {"operation_spans": False, "auto_configure": False,
                 "exclude": lambda scope: scope.get("path") in OPEN_PATHS}
    app = FastAPI(title="meshllm OpenAI-compatible API", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, telemetry=telemetry)
    app.state.mesh = mesh
    app.state.metrics = metrics or GatewayMetrics()
    app.include_router(router)
    app.include_router(documents_router)
    app.mount("/ui", StaticFiles(directory=WEB), name="ui")

    @app.get("/")
    async def ask_page():
        return FileResponse(WEB / "index.html")

    @app.get("/health")
    async def health():
        status = "SERVING" if mesh.ready else "NOT_SERVING"
        return JSONResponse({"status": status, "services": mesh.health}, status_code=200 if mesh.ready else 503)

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type:   # FastAPI then never parsed the body
            error = OpenAIError(400, f"the request body must be JSON sent with 'Content-Type: application/json' "
                                     f"(got {content_type or 'no content type'})", code="invalid_json")
        else:
            error = from_validation(list(exc.errors()))
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        error = OpenAIError(exc.status_code, message, code=_HTTP_CODES.get(exc.status_code))
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(grpc.RpcError)
    async def rpc_error(request: Request, exc: grpc.RpcError):
        error = from_rpc_error(exc, "mesh")
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone):
        log.info("client closed %s %s before its answer: its calls are cancelled", request.method, request.url.path)
        return Response(status_code=499)   # nginx's "client closed request": nobody reads it

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        incident = uuid.uuid4().hex[:12]
        log.error("internal error %s: %r", incident, exc, exc_info=exc)
        error = OpenAIError(500, f"internal error (incident {incident})", type="server_error", code="internal_error")
        return JSONResponse(error.body(), status_code=500)

    app.add_middleware(Guards, keys=server.keys, max_body_bytes=server.max_message_mb * 2**20,
                       max_concurrent=server.max_concurrent_rpcs)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics,
                       paths=frozenset(r.path for r in router.routes if "{" not in r.path) | {"/health"})
    return app


async def run(server: ServerConfig, config: OpenAIConfig) -> None:
    metrics = GatewayMetrics()
    app = create_app(server, config, metrics)
    uv_config = uvicorn.Config(app, host=server.host, port=server.port, ssl_certfile=server.tls_cert or None,
                               ssl_keyfile=server.tls_key or None, log_config=None, access_log=False,
                               server_header=False, timeout_graceful_shutdown=5, lifespan="on")
    metrics.serve(server.metrics_port, server.host)
    scheme = "https" if server.tls_cert else "http"
    log.info("serving the OpenAI-compatible API on %s://%s:%d/v1 (generation %s, retrieval %s, tokenizer %s)",
             scheme, server.host, server.port, config.generation_address, config.retrieval_address or "none",
             config.tokenizer_address or "none")
    await uvicorn.Server(uv_config).serve()
