"""The one mapping from every error the request path raises to a ``GatewayError``.

Policy denials (``from_denial``), engine errors (``from_engine``), Litestar's
own HTTP exceptions (unknown route, wrong method, body too large) and anything
unexpected (``to_gateway_error``: logged with its traceback, answered as a 500
that reveals nothing internal).  ``gateway.responses`` renders the result;
``gateway.observe`` reads it for metrics: neither imports the other.
"""

from __future__ import annotations

import logging

from litestar.exceptions import HTTPException

from accounts.errors import StoreUnavailable
from engine import errors as engine_errors
from engine.errors import (
    CallerBusy,
    EngineError,
    GenerationFailed,
    InsufficientMemory,
    LoadNotPermitted,
    ModelLoadFailed,
    ModelNotReady,
    RequestCancelled,
    WorkerCrashed,
)
from gateway.errors import (
    AccountsUnavailable,
    GatewayError,
    InsufficientStorage,
    InvalidRequest,
    MethodNotAllowed,
    ModelLoading,
    ModelUnavailable,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    RouteNotFound,
    ServerBusy,
)
from gateway.inference import RequestTimedOut
from policies.decision import Deny

log = logging.getLogger("gateway")


def from_denial(deny: Deny, headers: dict[str, str] | None = None) -> GatewayError:
    """The HTTP error of a policy denial (never mentions other keys)."""
    error: GatewayError
    if deny.status == 429:
        error = RateLimited(deny.message, code=deny.code, retry_after=deny.retry_after)
    elif deny.status == 507:
        error = InsufficientStorage(deny.message, code=deny.code, param="model")
    else:  # 403: the message of a period quota already says when it resets
        error = PermissionDenied(deny.message, code=deny.code, param=deny.details.get("scope"))
        if deny.code == "model_not_allowed":
            error.param = "model"
    error.extra_headers = headers or None
    return error


def from_engine(exc: EngineError) -> GatewayError:
    if isinstance(exc, RequestTimedOut):
        return RequestTimeout(f"The request took longer than the gateway allows ({exc}).")
    if isinstance(exc, CallerBusy):
        return RateLimited(str(exc), retry_after=exc.retry_after)
    if isinstance(exc, LoadNotPermitted):
        return PermissionDenied(str(exc), code="missing_scope", param="load")
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
    if isinstance(exc, StoreUnavailable):
        log.warning("failing closed: %s", exc)
        return AccountsUnavailable(
            f"The gateway cannot reach its store of {exc.store}, so it cannot check keys "
            "and limits; try again shortly.",
            retry_after=1,
        )
    if isinstance(exc, HTTPException):
        if "disconnected" in str(exc.detail):  # the client left mid-body: nobody to answer
            return InvalidRequest("The client disconnected before the body was sent.")
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
