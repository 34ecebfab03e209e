"""mlx-lm's pure-Python modules, run without importing MLX.

``mlx_lm/__init__.py`` imports MLX, which the gateway process never does (and
which lowers the process's open-files limit), yet the gateway needs mlx-lm's
tokenizer wrapper and its tool-call parsers, which need only ``transformers``,
``json`` and ``regex``.  ``module("tool_parsers.qwen3_coder")`` imports such a
module under a stand-in package (``_mlx_lm_files``) whose ``__path__`` is
mlx-lm's own directory, so its relative imports (``from .glm47 import ...``)
resolve to mlx-lm's files while ``mlx_lm/__init__.py`` never runs.  Imports
are serialized by one lock: ``transformers``' lazy first import is not
thread-safe.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import types
from types import ModuleType

PACKAGE = "_mlx_lm_files"
_LOCK = threading.RLock()


def _package() -> ModuleType:
    existing = sys.modules.get(PACKAGE)
    if existing is not None:
        return existing
    found = importlib.util.find_spec("mlx_lm")  # finds the package, imports nothing
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError("mlx_lm is not installed")
    package = types.ModuleType(PACKAGE)
    package.__path__ = list(found.submodule_search_locations)
    package.__package__ = PACKAGE
    sys.modules[PACKAGE] = package
    return package


def module(name: str) -> ModuleType:
    """``mlx_lm.<name>`` (dotted below mlx-lm), imported once without MLX."""
    if not all(part.isidentifier() for part in name.split(".")):
        raise ValueError(f"not a module name: {name!r}")
    with _LOCK:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import transformers  # noqa: F401  (first, and only once, under the lock)

        _package()
        return importlib.import_module(f"{PACKAGE}.{name}")
