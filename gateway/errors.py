"""The gateway's error tree; every error response is built from one of these.

    GatewayError                      500 server_error / internal_error
    ├── InvalidRequest                400 invalid_request_error (param named)
    ├── AuthenticationFailed          401 authentication_error / invalid_api_key
    ├── PermissionDenied              403 permission_error (code from the policy)
    ├── RateLimited                   429 rate_limit_error / rate_limit_exceeded
    ├── RequestTooLarge               413 invalid_request_error / request_too_large
    ├── RouteNotFound                 404 invalid_request_error / not_found
    ├── MethodNotAllowed              405 invalid_request_error / method_not_allowed
    ├── ModelNotFound                 404 invalid_request_error / model_not_found
    ├── InsufficientStorage           507 server_error / insufficient_memory (numbers kept)
    ├── RequestTimeout                504 server_error / request_timeout (engine.request_timeout)
    ├── NotSupported                  501 invalid_request_error / not_supported (Ollama's create)
    └── ServiceUnavailable            503 server_error (with Retry-After)
        ├── ModelLoading              503 model_loading
        ├── ServerBusy                503 server_busy (queue full)
        └── ModelUnavailable          503 model_unavailable (load failed, worker died)

Each class carries its HTTP status, error type and code.  ``gateway.responses``
renders them in the OpenAI shape, the only place that knows that shape.
"""

from __future__ import annotations

import math


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    extra_headers: dict[str, str] | None = None

    def headers(self) -> dict[str, str]:
        headers = dict(self.extra_headers or {})
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class RequestTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RouteNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class InsufficientStorage(GatewayError):
    status = 507
    type = "server_error"
    code = "insufficient_memory"


class RequestTimeout(GatewayError):
    status = 504
    type = "server_error"
    code = "request_timeout"


class NotSupported(GatewayError):
    status = 501
    type = "invalid_request_error"
    code = "not_supported"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class ModelLoading(ServiceUnavailable):
    code = "model_loading"


class ModelUnavailable(ServiceUnavailable):
    code = "model_unavailable"


class ServerBusy(ServiceUnavailable):
    code = "server_busy"


class AccountsUnavailable(ServiceUnavailable):
    """The shared store of keys and usage, or of the counters, cannot be reached: the
    gateway fails closed rather than serve without checking keys and limits."""

    code = "accounts_unavailable"
