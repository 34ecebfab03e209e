"""The gateway's error tree; every error response is built from one of these.

    GatewayError                      500 server_error / internal_error
    ├── InvalidRequest                400 invalid_request_error (param named)
    ├── RequestTooLarge               413 invalid_request_error / request_too_large
    ├── RouteNotFound                 404 invalid_request_error / not_found
    ├── MethodNotAllowed              405 invalid_request_error / method_not_allowed
    ├── ModelNotFound                 404 invalid_request_error / model_not_found
    ├── InsufficientStorage           507 server_error / insufficient_memory (numbers kept)
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

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


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
