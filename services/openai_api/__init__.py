"""An OpenAI-compatible HTTP API over the gRPC mesh (`meshllm serve openai`, port 8000).

app.py        the FastAPI application, its error handlers, the uvicorn server
guards.py     API key, body size and concurrency, refused before routing
routes.py     /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/rag/completions
schemas.py    the request bodies (pydantic)
translate.py  request bodies -> GenerateRequest / AskRequest / Embed texts (pure)
responses.py  gRPC responses -> OpenAI bodies and stream chunks (pure)
streaming.py  server-sent events, merged gRPC streams, cancellation when the client goes away
errors.py     gRPC status and validation errors -> OpenAI's error shape and HTTP status
mesh.py       grpc.aio channels to the services, their health, cached model facts
metrics.py    the gateway's Prometheus metrics
"""
