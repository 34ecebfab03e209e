"""Errors the engine raises to its caller (the gateway maps them to HTTP).

EngineError
├── ModelLoadFailed      the worker could not load the model (reason kept)
├── ModelNotReady        waited ``load_wait`` and the model is still loading
├── InsufficientMemory   the model can never fit the memory budget
├── ServerBusy           a queue is full (``retry_after``)
├── CallerBusy           this caller holds its share of a model's queue (``retry_after``)
├── LoadNotPermitted     the model is not loaded and this request may not cause a load
├── WorkerCrashed        the worker process died with this request in flight
├── RequestCancelled     a drain or an operator ended the request
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


class CallerBusy(EngineError):
    """One caller already holds ``engine.queue_per_key`` queued-plus-running requests."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LoadNotPermitted(EngineError):
    """The model is not loaded, no load is under way, and this request may not load it."""


class WorkerCrashed(EngineError):
    pass


class RequestCancelled(EngineError):
    pass


class GenerationFailed(EngineError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
