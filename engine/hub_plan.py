"""What a download fetches: a hub repo's files and sizes, read from metadata alone.

``fetch_plan`` reads a repo's file list and sizes from the hub's metadata (no
file byte is fetched) and keeps only what an MLX model needs, weights first
and ``config.json`` last (its presence marks a complete model).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

NEEDED = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "*.tiktoken",
)


class DownloadError(Exception):
    """The hub refused or failed (the message says which); nothing usable was written.

    ``missing`` is True when the repository (or revision) does not exist or is not
    an MLX model: the caller's mistake (404), not the hub's failure (503).
    """

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int


@dataclass(frozen=True)
class DownloadPlan:
    repo: str
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def needed(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return "/" not in path and any(fnmatch.fnmatchcase(name, p) for p in NEEDED)


def order_files(files: list[RemoteFile]) -> tuple[RemoteFile, ...]:
    """Weights first, config.json last: its presence marks a complete model."""
    return tuple(
        sorted(
            files,
            key=lambda f: (f.path == "config.json", not f.path.endswith(".safetensors"), f.path),
        )
    )


def fetch_plan(
    repo: str, revision: str = "main", *, endpoint: str | None = None, token: str | None = None
) -> DownloadPlan:
    """The files an MLX model needs from ``repo`` and their sizes (metadata only)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(
            repo, revision=revision, files_metadata=True
        )
    except GatedRepoError as exc:
        raise DownloadError(f"{repo} is gated; the hub token has no access", missing=True) from exc
    except RepositoryNotFoundError as exc:
        raise DownloadError(
            f"{repo} does not exist on the hub (or is private)", missing=True
        ) from exc
    except RevisionNotFoundError as exc:
        raise DownloadError(f"{repo} has no revision {revision}", missing=True) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise DownloadError(f"the hub did not answer for {repo}: {exc}") from exc
    files = [
        RemoteFile(s.rfilename, int(s.size or 0))
        for s in info.siblings or []
        if needed(s.rfilename)
    ]
    names = {f.path for f in files}
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise DownloadError(
            f"{repo} is not an MLX model (no config.json and safetensors)", missing=True
        )
    return DownloadPlan(repo, revision, str(info.sha), order_files(files))
