"""The model store: which models the gateway knows and where they live on disk.

The catalogue holds the operator's models (``[models.catalogue.ID]``), the
MLX model directories found under the models directory and, optionally, MLX
chat models in the Hugging Face cache.  A name resolves to one catalogue id:
exact id first, then exact aliases, then glob aliases (``claude-*``) in the
order the operator wrote them.  Nothing is ever silently replaced by another
model, and an unknown name resolves to nothing.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ModelSpec:
    id: str
    path: Path
    aliases: tuple[str, ...] = ()
    owned_by: str = "mlx-gateway"
    created: int = 0
    pinned: bool = False
    keep_alive: float | None = None  # None: the engine's default
    context_length: int | None = None  # None: the model's own maximum
    repo: str | None = None
    revision: str | None = None
    tool_format: str | None = None  # a fallback for a template without tool support
    kv_budget: int | None = None  # KV tokens of all running generations; None: derived
    decoding: str | None = None  # "auto", "batched", "interleaved"; None: the engine's

    @property
    def on_disk(self) -> bool:
        return (self.path / "config.json").is_file() and any(self.path.glob("*.safetensors"))

    def size_bytes(self) -> int:
        if not self.path.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def model_context_length(self) -> int | None:
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        value = config.get("max_position_embeddings")
        return int(value) if isinstance(value, int) else None

    def serving_context_length(self) -> int | None:
        model_max = self.model_context_length()
        if self.context_length and model_max:
            return min(self.context_length, model_max)
        return self.context_length or model_max


@dataclass
class ModelStore:
    specs: dict[str, ModelSpec] = field(default_factory=dict)
    glob_aliases: list[tuple[str, str]] = field(default_factory=list)

    def add(self, spec: ModelSpec) -> None:
        self.specs[spec.id] = spec

    def alias(self, pattern: str, target: str) -> None:
        """``pattern`` (exact or glob) names ``target`` (a model id or ``default``)."""
        self.glob_aliases.append((pattern, target))

    def resolve(self, name: str) -> ModelSpec | None:
        """The model a request's name refers to, or None."""
        return self._resolve(name, depth=0)

    def _resolve(self, name: str, depth: int) -> ModelSpec | None:
        if name in self.specs:
            return self.specs[name]
        for spec in self.specs.values():
            if name in spec.aliases:
                return spec
        if depth > 2:
            return None
        for pattern, target in self.glob_aliases:
            if name == pattern or (_is_glob(pattern) and fnmatch.fnmatchcase(name, pattern)):
                return self._resolve(target, depth + 1)
        return None

    def all(self) -> list[ModelSpec]:
        return sorted(self.specs.values(), key=lambda s: s.id)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def is_mlx_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def discover(models_dir: Path) -> list[ModelSpec]:
    """MLX model directories directly under ``models_dir`` (a ``config.json`` and weights)."""
    if not models_dir.is_dir():
        return []
    found = []
    for path in sorted(models_dir.iterdir()):
        if path.name.startswith(".") or not is_mlx_model_dir(path):
            continue
        created = int((path / "config.json").stat().st_mtime)
        found.append(ModelSpec(id=path.name, path=path, created=created))
    return found
