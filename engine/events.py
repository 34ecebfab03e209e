"""What the engine reports as it works, for metrics and logs.

The registry calls these hooks; the gateway passes an implementation that
feeds Prometheus.  The engine itself never imports a metrics library.  Every
method is a no-op here, so an implementation overrides only what it needs.
"""

from __future__ import annotations

from engine.states import Serving


class EngineEvents:
    def state_changed(self, model_id: str, state: str) -> None: ...

    def loaded(self, model_id: str, result: str, seconds: float, memory_bytes: int) -> None: ...

    def unloaded(self, model_id: str) -> None: ...

    def evicted(self, model_id: str, kind: str) -> None: ...

    def swapped(self, model_id: str) -> None:
        """``model_id`` needed other models evicted before it could load."""

    def drained(self, model_id: str, seconds: float) -> None: ...

    def drain_cancelled(self, model_id: str, requests: int) -> None: ...

    def worker_crashed(self, model_id: str) -> None: ...

    def deadline_missed(self, model_id: str, state: str) -> None: ...

    def queue_changed(self, model_id: str, depth: int) -> None: ...

    def waited(self, model_id: str, seconds: float) -> None: ...

    def in_flight(self, model_id: str, leases: int) -> None: ...

    def memory(self, used: int, budget: int) -> None: ...

    def serving(self, model_id: str, serving: Serving | None) -> None:
        """How the model serves now (None: it is not loaded)."""


NullEvents = EngineEvents
