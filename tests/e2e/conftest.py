"""Fixtures of the end-to-end download tests: tiny model repos served by a local hub."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.downloads import REPO_ID
from tests.support.local_hub import LocalHub
from tests.support.server import REPO


@pytest.fixture(scope="session")
def tiny_repo_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model directories to serve as hub repos; ``huge-context`` claims a context
    whose KV cache can never fit any memory budget."""
    root = tmp_path_factory.mktemp("hub-repos")
    dirs = {}
    for seed, name in enumerate(["tiny-dl", "other", "evil", "third"]):
        subprocess.run(
            [sys.executable, "-m", "tests.support.tiny_model", str(root / name), str(seed)],
            check=True,
            cwd=REPO,
        )
        dirs[name] = root / name
    huge = root / "huge-context"
    shutil.copytree(dirs["tiny-dl"], huge)
    config = json.loads((huge / "config.json").read_text())
    config["max_position_embeddings"] = 2**40
    (huge / "config.json").write_text(json.dumps(config))
    dirs["huge-context"] = huge
    return dirs


@pytest.fixture
def hub(tiny_repo_dirs: dict[str, Path]) -> Iterator[LocalHub]:
    with LocalHub() as hub:
        hub.add_repo(REPO_ID, tiny_repo_dirs["tiny-dl"])
        hub.add_repo("mlx-community/other", tiny_repo_dirs["other"])
        hub.add_repo("mlx-community/third", tiny_repo_dirs["third"])
        hub.add_repo("mlx-community/huge-context", tiny_repo_dirs["huge-context"])
        hub.add_repo("evil-org/tiny", tiny_repo_dirs["evil"])
        yield hub
