"""The whole admission decision for one request, in a fixed order.

``evaluate`` runs every check of an inference request and returns the first
denial, or ``ALLOW``.  The order is part of the contract: a key that may not
use a model learns that before anything about its usage, and nothing about
the server's memory is said to a key that may not load the model anyway.

1. the model allowlist (403 ``model_not_allowed``);
2. the ``infer`` scope (403 ``missing_scope``);
3. a model on disk but not loaded needs the ``load`` scope (403 ``missing_scope``);
4. requests per minute, 5. tokens per minute, 6. concurrency (429);
7. tokens per day (403 ``quota_exhausted``);
8. a model not loaded: loads per hour (403 ``quota_exhausted``);
9. a model not loaded: the memory budget (507 ``insufficient_memory``).

``evaluate_download`` does the same for downloading a repository.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from policies.allowlist import model_allowed
from policies.decision import ALLOW, DOWNLOAD_NOT_ALLOWED, MODEL_NOT_ALLOWED, Decision, Deny
from policies.denials import missing_scope
from policies.limits import (
    check_concurrency,
    check_download_quota,
    check_loads_per_hour,
    check_requests_per_minute,
    check_tokens_per_day,
    check_tokens_per_minute,
)
from policies.principal import Principal
from policies.resources import ModelResources, check_memory, check_storage
from policies.usage import UsageSnapshot


@dataclass(frozen=True)
class PolicyRequest:
    """What an inference request asks for, as far as policy cares.

    Attributes:
        model_id: the canonical catalogue id (aliases already resolved).
        requested_tokens: prompt estimate + ``max_tokens`` (the tokens-per-minute
            check caps it at the limit itself).
        typical_request_seconds: the measured average request duration, the
            ``retry_after`` estimate of a concurrency denial.
    """

    model_id: str
    requested_tokens: int
    typical_request_seconds: float = 10.0


def first_denial(checks: Iterable[Callable[[], Decision]]) -> Decision:
    """Run ``checks`` in order and return the first ``Deny``, or ``ALLOW``."""
    for check in checks:
        decision = check()
        if isinstance(decision, Deny):
            return decision
    return ALLOW


def _allowlist(principal: Principal, model_id: str) -> Decision:
    if model_allowed(principal, model_id):
        return ALLOW
    return Deny(
        MODEL_NOT_ALLOWED,
        f"This key may not use model {model_id}.",
        403,
        details={"model": model_id},
    )


def _scope(principal: Principal, scope: str, message: str | None = None) -> Decision:
    return ALLOW if principal.has(scope) else missing_scope(scope, message)


def evaluate(
    principal: Principal,
    request: PolicyRequest,
    usage: UsageSnapshot,
    resources: ModelResources,
    now: float,
) -> Decision:
    """The decision for one inference request: the first denial in the fixed order.

    ``usage`` is this key's snapshot at ``now``; ``resources`` describes the
    requested model.  Steps 3, 8 and 9 apply only to a model that is not
    loaded (step 3 only to one on disk): a key without the ``load`` scope may
    use a loaded model but never cause a load.
    """
    limits, model, tokens = principal.limits, request.model_id, request.requested_tokens
    not_loaded = not resources.loaded
    load_message = (
        f"Model {model} is not loaded, and loading it needs the `load` scope, which this key lacks."
    )
    checks: list[Callable[[], Decision]] = [
        lambda: _allowlist(principal, model),
        lambda: _scope(principal, "infer"),
        lambda: (
            _scope(principal, "load", load_message) if not_loaded and resources.on_disk else ALLOW
        ),
        lambda: check_requests_per_minute(limits, usage, now),
        lambda: check_tokens_per_minute(limits, usage, now, tokens),
        lambda: check_concurrency(limits, usage, request.typical_request_seconds),
        lambda: check_tokens_per_day(limits, usage, now, tokens),
        lambda: check_loads_per_hour(limits, usage, now) if not_loaded else ALLOW,
        lambda: check_memory(resources) if not_loaded else ALLOW,
    ]
    return first_denial(checks)


def _download_gate(downloads_enabled: bool, repo_allowed: bool, repo: str) -> Decision:
    if not downloads_enabled:
        reason, message = "disabled", "Downloading models is disabled on this gateway."
    elif not repo_allowed:
        reason, message = "repo_not_allowed", f"Downloading {repo} is not allowed on this gateway."
    else:
        return ALLOW
    return Deny(DOWNLOAD_NOT_ALLOWED, message, 403, details={"reason": reason})


def evaluate_download(
    principal: Principal,
    repo_allowed: bool,
    downloads_enabled: bool,
    size_bytes: int,
    free_bytes: int,
    usage: UsageSnapshot,
    now: float,
    *,
    repo_id: str | None = None,
) -> Decision:
    """The decision for downloading a repository of ``size_bytes``: first denial wins.

    1. downloads enabled and the repository allowed (403 ``download_not_allowed``);
    2. the ``download`` scope (403 ``missing_scope``);
    3. the daily download quota (403 ``quota_exhausted``);
    4. the free disk space (507 ``insufficient_storage``).

    ``repo_id`` only names the repository in messages.
    """
    repo = repo_id or "this repository"
    checks: list[Callable[[], Decision]] = [
        lambda: _download_gate(downloads_enabled, repo_allowed, repo),
        lambda: _scope(principal, "download"),
        lambda: check_download_quota(principal.limits, usage, now, size_bytes),
        lambda: check_storage(size_bytes, free_bytes, f"Downloading {repo}"),
    ]
    return first_denial(checks)
