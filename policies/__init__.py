"""The pure policy layer: who may do what, and how much, decided from plain inputs.

Every check takes plain data (a ``Principal``, the requested model, a
``UsageSnapshot``, ``ModelResources``, ``now`` in epoch seconds) and returns
``Allow`` or ``Deny``.  Nothing here does I/O, reads a clock, logs or counts;
nothing here imports ``gateway`` or ``engine``.
"""

from __future__ import annotations

from policies.allowlist import model_allowed, visible_models
from policies.decision import ALLOW, Allow, Decision, Deny
from policies.evaluate import PolicyRequest, evaluate, evaluate_download
from policies.limits import format_reset, ratelimit_headers
from policies.principal import SCOPES, Limits, Principal
from policies.resources import ModelResources, check_memory
from policies.usage import UsageSnapshot

__all__ = [
    "ALLOW",
    "SCOPES",
    "Allow",
    "Decision",
    "Deny",
    "Limits",
    "ModelResources",
    "PolicyRequest",
    "Principal",
    "UsageSnapshot",
    "check_memory",
    "evaluate",
    "evaluate_download",
    "format_reset",
    "model_allowed",
    "ratelimit_headers",
    "visible_models",
]
