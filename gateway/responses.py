"""The one place that turns exceptions into OpenAI-shaped error responses.

Engine errors, Litestar's own HTTP exceptions (unknown route, wrong method,
body too large) and decoding errors all become a ``GatewayError`` first, then
``{"error": {"message", "type", "param", "code"}}`` with its status.
Anything unexpected is logged with its traceback and answered as a 500 that
reveals nothing internal.
"""

from __future__ import annotations

import logging
import re
from typing import TypeVar

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from engine import errors as engine_errors
from engine.errors import (
    EngineError,
    GenerationFailed,
    InsufficientMemory,
    ModelLoadFailed,
    ModelNotReady,
    RequestCancelled,
    WorkerCrashed,
)
from gateway.anthropic_schema import ErrorDetail as AnthropicDetail
from gateway.anthropic_schema import ErrorResponse as AnthropicError
from gateway.errors import (
    GatewayError,
    InsufficientStorage,
    InvalidRequest,
    MethodNotAllowed,
    ModelLoading,
    ModelUnavailable,
    RequestTooLarge,
    RouteNotFound,
    ServerBusy,
)
from gateway.observe import record_denial
from gateway.openai_schema import ErrorBody, ErrorResponse

log = logging.getLogger("gateway")

T = TypeVar("T")

_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")


def decode_body(body: bytes, type_: type[T]) -> T:
    """Decode a JSON request body into ``type_`` or raise ``InvalidRequest`` naming the field."""
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        path = match.group("path").replace("[...]", "") if match else ""
        message = text[: match.start()] if match else text
        missing = _MISSING.search(message)
        if missing:
            path = f"{path}.{missing.group('field')}" if path else missing.group("field")
        where = f" (at `{path}`)" if path else ""
        raise InvalidRequest(f"{message}{where}", param=path or None) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from None


def from_engine(exc: EngineError) -> GatewayError:
    if isinstance(exc, ModelNotReady):
        return ModelLoading(str(exc), retry_after=exc.retry_after)
    if isinstance(exc, InsufficientMemory):
        return InsufficientStorage(str(exc), param="model")
    if isinstance(exc, engine_errors.ServerBusy):
        return ServerBusy(str(exc), retry_after=exc.retry_after)
    if isinstance(exc, RequestCancelled):
        return ModelUnavailable(str(exc), code="request_cancelled", retry_after=1)
    if isinstance(exc, ModelLoadFailed):
        return ModelUnavailable(str(exc), retry_after=5)
    if isinstance(exc, WorkerCrashed):
        return ModelUnavailable(
            f"The model's worker stopped while serving this request ({exc}); retry.",
            retry_after=1,
        )
    if isinstance(exc, GenerationFailed):
        if exc.code == "context_length_exceeded":
            return InvalidRequest(str(exc), param="messages", code="context_length_exceeded")
        if exc.code == "invalid_request":
            return InvalidRequest(str(exc))
    return GatewayError("The model failed to generate a response.")


def to_gateway_error(exc: Exception) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, EngineError):
        return from_engine(exc)
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return RouteNotFound("No such route.")
        if exc.status_code == 405:
            return MethodNotAllowed("Method not allowed for this route.")
        if exc.status_code == 413:
            return RequestTooLarge("The request body is larger than the gateway accepts.")
        if 400 <= exc.status_code < 500:
            error = InvalidRequest(str(exc.detail))
            error.status = exc.status_code
            return error
    log.exception("unhandled error", exc_info=exc)
    return GatewayError("Internal error.")


def error_body(error: GatewayError) -> ErrorResponse:
    return ErrorResponse(ErrorBody(error.message, error.type, error.param, error.code))


def error_response(error: GatewayError) -> Response[bytes]:
    return Response(
        content=msgspec.json.encode(error_body(error)),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers(),
    )


ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    507: "api_error",
}


def anthropic_body(error: GatewayError) -> AnthropicError:
    kind = ANTHROPIC_TYPES.get(error.status, "api_error")
    return AnthropicError(AnthropicDetail(kind, error.message))


def is_anthropic(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def handle_exception(request: Request, exc: Exception) -> Response[bytes]:
    """Litestar exception handler for every route: Anthropic's shape on its routes,
    OpenAI's everywhere else."""
    error = to_gateway_error(exc)
    if error.status in (401, 403, 429, 507) or error.code in ("server_busy",):
        record_denial(error.code)
        request.scope.setdefault("state", {})["denial"] = error.code
    if not is_anthropic(request.url.path):
        return error_response(error)
    return Response(
        content=msgspec.json.encode(anthropic_body(error)),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers(),
    )
