"""Failures in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP
status a client of OpenAI expects: from a service's gRPC status, from request validation, or
raised by the gateway itself where a request asks for something the mesh cannot do.
"""
from __future__ import annotations

import grpc

# gRPC status -> (HTTP status, OpenAI error type, default code)
_FROM_GRPC: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_value"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", "invalid_value"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", "failed_precondition"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "invalid_request_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", "permission_denied"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error", "conflict"),
    grpc.StatusCode.ABORTED: (409, "invalid_request_error", "conflict"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.CANCELLED: (499, "invalid_request_error", "cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "server_error", "not_implemented"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error", "timeout"),
}
_SERVER_ERROR = (500, "server_error", "internal_error")

# The Generation service reports a prompt that does not fit as INVALID_ARGUMENT, telling it apart
# only by its message ("... the model's context holds 8192", "... exceed the model's context (8192)");
# OpenAI answers the same case 400 context_length_exceeded.
_CONTEXT_OVERFLOW = "model's context"
# grpc-core's own message when a request is over the channel's or server's message size limit
_TOO_LARGE = "larger than max"


class OpenAIError(Exception):
    """An HTTP error response in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"OpenAIError({self.status}, {self.message!r}, param={self.param!r}, code={self.code!r})"


def invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def unsupported(param: str, why: str = "") -> OpenAIError:
    """A parameter the mesh has no way to honour: refused rather than silently ignored."""
    reason = f": {why}" if why else ""
    return OpenAIError(400, f"{param} is not supported by meshllm{reason}", param=param, code="unsupported_parameter")


def model_not_found(model: str, known: list[str]) -> OpenAIError:
    return OpenAIError(404, f"The model '{model}' does not exist; this mesh serves: {', '.join(known)}",
                       param="model", code="model_not_found")


def from_grpc(code: grpc.StatusCode, details: str, service: str) -> OpenAIError:
    """The HTTP error for a service's status; `service` names it in messages about reaching it."""
    status, type_, error_code = _FROM_GRPC.get(code, _SERVER_ERROR)
    message = details or code.name
    if code == grpc.StatusCode.INVALID_ARGUMENT and _CONTEXT_OVERFLOW in message:
        error_code = "context_length_exceeded"
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in message:
        status, type_, error_code = 413, "invalid_request_error", "request_too_large"
    elif code == grpc.StatusCode.UNAVAILABLE:
        message = f"the {service} service is unavailable: {message}"
    elif status == 500:
        message = f"the {service} service failed: {message} ({code.name})"
    return OpenAIError(status, message, type_, None, error_code)


def from_rpc_error(exc: grpc.RpcError, service: str) -> OpenAIError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return from_grpc(code, details or "", service)


def from_validation(errors: list[dict]) -> OpenAIError:
    """pydantic's errors for a request body as one 400: the first error names the parameter, the
    message lists them all."""
    if not errors:
        return invalid("the request body is not valid")
    messages = [_validation_message(e) for e in errors]
    first = errors[0]
    kind = first.get("type", "")
    code = {"extra_forbidden": "unknown_parameter", "missing": "missing_required_parameter",
            "json_invalid": "invalid_json"}.get(kind, "invalid_value")
    return invalid("; ".join(dict.fromkeys(messages)), param=_param(first.get("loc", ())) or None, code=code)


def _param(loc) -> str:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _validation_message(error: dict) -> str:
    param, kind, msg = _param(error.get("loc", ())), error.get("type", ""), error.get("msg", "invalid")
    if kind == "json_invalid":
        return f"the request body is not valid JSON: {error.get('ctx', {}).get('error', msg)}"
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}"
    if kind == "missing":
        return f"Missing required parameter: '{param}'"
    msg = msg.removeprefix("Value error, ")
    return f"{param}: {msg}" if param else msg
