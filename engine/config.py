"""The registry's configuration: budgets, bounds and deadlines (the gateway fills it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegistryConfig:
    load_wait: float = 30.0
    prompt_cache_size: int = 8
    stop_timeout: float = 5.0
    memory_budget: int = 8 * 1024**3
    max_loaded_models: int | None = None
    min_residency: float = 10.0
    keep_alive: float = 600.0
    load_timeout: float = 120.0
    drain_timeout: float = 30.0
    unload_timeout: float = 10.0
    max_concurrent: int = 4
    queue_per_model: int = 32
    queue_total: int = 128
    queue_per_key: int = 0  # queued-plus-running requests per caller and model; 0: no cap
    worker_overhead: int = 256 * 1024**2
    spare_worker: bool = False
    decoding: str = "auto"  # a model's own setting wins
    tick: float = 0.25
