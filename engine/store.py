"""The model store: which models the gateway knows and where they live on disk.

For now the catalogue is the bundled default model plus any MLX model
directory found under the models directory.  Names resolve to a catalogue id
by exact id or alias; nothing is ever silently replaced by another model.
"""

from __future__ import annotations

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

    @property
    def on_disk(self) -> bool:
        return (self.path / "config.json").is_file()

    def size_bytes(self) -> int:
        if not self.path.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def context_length(self) -> int | None:
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        value = config.get("max_position_embeddings")
        return int(value) if isinstance(value, int) else None


@dataclass
class ModelStore:
    specs: dict[str, ModelSpec] = field(default_factory=dict)

    def add(self, spec: ModelSpec) -> None:
        self.specs[spec.id] = spec

    def resolve(self, name: str) -> ModelSpec | None:
        """The model a request's name refers to: exact id first, then aliases."""
        if name in self.specs:
            return self.specs[name]
        for spec in self.specs.values():
            if name in spec.aliases:
                return spec
        return None

    def all(self) -> list[ModelSpec]:
        return sorted(self.specs.values(), key=lambda s: s.id)


def discover(models_dir: Path) -> list[ModelSpec]:
    """MLX model directories directly under ``models_dir`` (a ``config.json`` and weights)."""
    if not models_dir.is_dir():
        return []
    found = []
    for path in sorted(models_dir.iterdir()):
        if path.name.startswith(".") or not (path / "config.json").is_file():
            continue
        if not any(path.glob("*.safetensors")):
            continue
        created = int((path / "config.json").stat().st_mtime)
        found.append(ModelSpec(id=path.name, path=path, created=created))
    return found
