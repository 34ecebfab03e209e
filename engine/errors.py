"""Errors the engine raises to its caller (the gateway maps them to HTTP).

EngineError
├── ModelLoadFailed      the worker could not load the model (reason kept)
├── ModelNotReady        waited ``load_wait`` and the model is still loading
├── WorkerCrashed        the worker process died with this request in flight
└── GenerationFailed     the worker refused or failed one request (``code``)
"""

from __future__ import annotations


class EngineError(Exception):
    pass


class ModelLoadFailed(EngineError):
    pass


class ModelNotReady(EngineError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InsufficientMemory(EngineError):
    def __init__(self, message: str, *, need: int, budget: int, pinned: int) -> None:
        super().__init__(message)
        self.need, self.budget, self.pinned = need, budget, pinned


class ServerBusy(EngineError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WorkerCrashed(EngineError):
    pass


class RequestCancelled(EngineError):
    pass


class GenerationFailed(EngineError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
