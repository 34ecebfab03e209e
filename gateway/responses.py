"""The one place that renders errors: OpenAI's shape, Anthropic's and Ollama's on theirs.

Every exception becomes a ``GatewayError`` first (``gateway.http_errors``), then
``{"error": {"message", "type", "param", "code"}}``, Anthropic's
``{"type": "error", "error": {"type", "message"}}`` (``/v1/messages``) or
Ollama's ``{"error": "..."}`` (``/api/*``), with its status and headers.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TypeVar

import msgspec
from litestar import Request, Response

from gateway.anthropic_schema import ErrorDetail as AnthropicDetail
from gateway.anthropic_schema import ErrorResponse as AnthropicError
from gateway.errors import GatewayError, InvalidRequest
from gateway.events import Event
from gateway.http_errors import from_engine, to_gateway_error
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


def is_ollama(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def ollama_body(error: GatewayError) -> dict[str, str]:
    """Ollama's error: ``{"error": "..."}`` (its clients read nothing else)."""
    return {"error": error.message}


def remember(request: Request, error: GatewayError) -> None:
    """Keep the error among the gateway's recent events (the console shows them)."""
    ctx = getattr(request.app.state, "ctx", None)
    if ctx is None:
        return
    principal = request.scope.get("user")
    ctx.events.record(
        Event(
            time.time(),
            getattr(principal, "key_id", None),
            request.url.path[:200],
            error.status,
            error.code,
            error.message[:300],
        )
    )


def handle_exception(request: Request, exc: Exception) -> Response[bytes]:
    """Litestar exception handler for every route: Anthropic's shape on its routes,
    OpenAI's everywhere else."""
    error = to_gateway_error(exc)
    if error.status in (401, 403, 429, 507) or error.code in ("server_busy",):
        record_denial(error.code)
        request.scope.setdefault("state", {})["denial"] = error.code
    path = request.url.path
    remember(request, error)
    if path == "/ui" or path.startswith("/ui/"):
        from gateway.console.pages import error_page  # the console answers in HTML

        return error_page(request, error)
    if is_ollama(path):
        body: object = ollama_body(error)
    elif is_anthropic(path):
        body = anthropic_body(error)
    else:
        return error_response(error)
    return Response(
        content=msgspec.json.encode(body),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers(),
    )


__all__ = ["decode_body", "error_body", "from_engine", "handle_exception", "to_gateway_error"]
