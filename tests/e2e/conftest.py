"""Fixtures of the end-to-end download tests: tiny model repos served by a local hub."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.browser import browser_calls, chromium_path, shared_browser
from tests.support.downloads import REPO_ID
from tests.support.local_hub import LocalHub
from tests.support.server import REPO

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


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


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, driven by Playwright: one for the whole session.
    Skips the browser tests when there is no chromium, no playwright, or chromium does
    not launch."""
    path = chromium_path()
    if path is None:
        pytest.skip(
            "no chromium: the browser tests need Debian's chromium (apt-get install "
            "chromium) or GATEWAY_TEST_CHROMIUM set to a chromium binary"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"playwright is not importable ({exc}): pip install -e '.[test]'")
    with ExitStack() as stack:
        try:
            launched = stack.enter_context(shared_browser(path))
        except Exception as exc:
            pytest.skip(f"chromium ({path}) did not launch under Playwright: {exc}")
        yield launched


@pytest.fixture(autouse=True)
def _browser_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Around a test that uses the browser, marks Playwright's loop as running, as its
    sync API needs (see tests/support/browser.py); the other tests run without it."""
    if "browser" not in request.fixturenames:
        yield
        return
    with browser_calls(request.getfixturevalue("browser")):
        yield


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page, in a context (cookies, storage) of its own, 1280x900; Playwright
    waits at most 10 s for anything (its default is 30 s)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()
