"""What the gateway refuses before routing, in OpenAI's error shape: a missing or wrong API key
(401, checked before the body is even read, against the same MESHLLM_API_KEYS and with the same
functions as the gRPC services), a body over the message limit (413), more requests at once than
max_concurrent_rpcs (429). /health stays open, as grpc.health does on the services, and so does the
Ask page (/ and /ui/...), which holds no data: its calls carry the key the user types in."""
from __future__ import annotations

import json

from ..common.auth import bearer_token, key_matches
from .errors import OpenAIError

OPEN_PATHS = ("/health", "/")
OPEN_PREFIXES = ("/ui/",)            # the page's own files: the key is typed into the page, not needed for it
_KEY_MESSAGE = "Incorrect or missing API key: send the header 'Authorization: Bearer <key>'"


async def send_error(send, error: OpenAIError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Guards:
    def __init__(self, app, keys: list[str], max_body_bytes: int, max_concurrent: int):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.max_body_bytes = max_body_bytes
        self.max_concurrent = max_concurrent
        self.active = 0

    def refusal(self, scope) -> OpenAIError | None:
        if scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES):
            return None
        headers = dict(scope.get("headers") or ())
        if self.keys and not key_matches(bearer_token(headers.get(b"authorization")), self.keys):
            return OpenAIError(401, _KEY_MESSAGE, code="invalid_api_key")
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return OpenAIError(413, f"the request body has {int(length)} bytes; the limit is {self.max_body_bytes}",
                               code="request_too_large")
        if self.active >= self.max_concurrent:
            return OpenAIError(429, f"the gateway is answering {self.active} requests, its limit; retry shortly",
                               type="rate_limit_error", code="rate_limit_exceeded")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is not None:
            return await send_error(send, refusal)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
