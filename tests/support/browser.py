"""Browser tests of the console: Debian's chromium driven by Playwright, and checks of
the HTML itself (strict HTML5 parsing, labels on every form control).

Playwright never downloads a browser here: it always launches the system chromium
(``GATEWAY_TEST_CHROMIUM`` overrides its path), headless, with the flags that keep it
from reaching for the network, which is closed on CI. ``playwright`` and ``html5lib``
are imported where they are used, so that importing this module costs nothing.

Playwright's sync API runs its asyncio loop in a greenlet, and between two of its
calls it leaves that loop marked as the thread's *running* loop (``wait_for_future()``
in ``playwright/_impl/_greenlets.py``). While it is so marked, ``asyncio.run()``, anyio
and pytest's anyio plugin refuse to start in that thread ("cannot be called from a
running event loop"), for as long as Playwright runs. ``shared_browser()``, for a
browser that lives through a whole session, clears the mark while it holds the browser
and ``browser_calls()`` sets it again around a block of Playwright calls (a test's
body): the other tests of the session keep their event loops.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[2]

ARTIFACTS = (
    Path(os.environ.get("GATEWAY_TEST_ARTIFACTS", REPO / ".cache" / "artifacts")) / "console"
)

# Headless, and nothing that phones home: with the network closed, chromium otherwise
# stalls on its background fetches (component updates, sync, QUIC probes). Root needs
# --no-sandbox; containers have a small /dev/shm. Playwright adds its own temporary
# --user-data-dir, a fresh empty profile per launch.
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

LAUNCH_TIMEOUT_MS = 60_000


def chromium_path() -> str | None:
    """The chromium to launch: ``GATEWAY_TEST_CHROMIUM``, else Debian's
    ``/usr/bin/chromium``, else ``chromium`` on the PATH; None when there is none."""
    override = os.environ.get("GATEWAY_TEST_CHROMIUM")
    if override:
        return override
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


@contextmanager
def launched_browser(executable: str | None = None) -> Iterator[Browser]:
    """Starts Playwright's sync API, launches chromium headless and yields the
    ``Browser``; closes the browser and stops Playwright after."""
    from playwright.sync_api import sync_playwright

    path = executable or chromium_path()
    if path is None:
        raise FileNotFoundError(
            "no chromium: install Debian's chromium or set GATEWAY_TEST_CHROMIUM"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path,
            args=list(CHROMIUM_ARGS),
            headless=True,
            timeout=LAUNCH_TIMEOUT_MS,
            # Playwright's handlers of SIGINT/SIGTERM/SIGHUP would close chromium
            # under pytest's feet; pytest and pytest-timeout handle those.
            handle_sigint=False,
            handle_sigterm=False,
            handle_sighup=False,
        )
        try:
            yield browser
        finally:
            # The caller may have cleared the mark (shared_browser()): the close
            # below, and the stop, need it.
            _mark_running(browser._loop)  # type: ignore[attr-defined]
            browser.close()


def _mark_running(loop: asyncio.AbstractEventLoop | None) -> None:
    asyncio._set_running_loop(loop)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@contextmanager
def shared_browser(executable: str | None = None) -> Iterator[Browser]:
    """``launched_browser()`` for a browser that outlives a test (a session fixture):
    the Playwright loop is not marked as running while the browser is yielded, so that
    the tests in between can run event loops of their own. Make the calls to it inside
    ``browser_calls(browser)``."""
    with launched_browser(executable) as browser:
        _mark_running(None)
        yield browser


@contextmanager
def browser_calls(browser: Browser) -> Iterator[None]:
    """Marks the Playwright loop of ``browser`` as this thread's running loop for the
    block, as Playwright's sync API needs between its calls, and restores the previous
    mark after (for a ``shared_browser()``: none)."""
    loop: asyncio.AbstractEventLoop = browser._loop  # type: ignore[attr-defined]
    previous = _running_loop()
    if previous is not None and previous is not loop:
        raise RuntimeError(
            "Playwright's sync API cannot run inside another running event loop: "
            "browser tests must be plain (not async) test functions"
        )
    _mark_running(loop)
    try:
        yield
    finally:
        _mark_running(previous)


def screenshot(page: Page, name: str) -> Path:
    """Saves a full-page PNG of ``page`` as ``ARTIFACTS/<name>.png``; returns its path."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name.removesuffix(".png")).strip("-.") or "page"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{stem}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _error_message(error: tuple[Any, ...]) -> str:
    from html5lib.constants import E

    (line, col), code, datavars = error
    template = E.get(code, code)
    try:
        text = template % datavars if datavars else template
    except (TypeError, KeyError, ValueError):
        text = f"{template} {datavars}"
    return f"line {line}, col {col}: {text} [{code}]"


def strict_parse(html: str) -> None:
    """Parses ``html`` with html5lib's strict HTML5 parser; raises AssertionError listing
    every parse error (line, column, message and the offending source line) when the
    document is not valid HTML5."""
    import html5lib
    from html5lib.html5parser import ParseError

    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    try:
        parser.parse(html)
    except ParseError:
        pass
    else:
        return
    # The strict parser stops at the first error; a lenient pass lists all of them.
    lenient = html5lib.HTMLParser(strict=False, namespaceHTMLElements=False)
    lenient.parse(html)
    errors = lenient.errors or parser.errors
    lines = html.splitlines()
    report = []
    for error in errors:
        report.append(_error_message(error))
        line = error[0][0]
        if 1 <= line <= len(lines):
            report.append(f"    {lines[line - 1].strip()[:160]}")
    count = len(errors)
    raise AssertionError(
        f"not valid HTML5 ({count} parse error{'s' if count != 1 else ''}):\n" + "\n".join(report)
    )


_UNLABELLED_INPUT_TYPES = {"hidden", "submit", "button", "reset", "image"}


def _describe(element: Element) -> str:
    parts = [element.tag]
    for attr in ("type", "name", "id"):
        value = element.get(attr)
        if value is not None:
            parts.append(f'{attr}="{value}"')
    return " ".join(parts)


def _text(element: Element, skip: Element | None = None) -> str:
    """The text an element contributes to a name: its text and the ``alt`` of its
    images, without the subtree of ``skip`` (the control a label wraps)."""
    pieces: list[str] = []

    def walk(node: Element) -> None:
        if node is skip:
            return
        if node.tag == "img":
            pieces.append(node.get("alt") or "")
        if node.text:
            pieces.append(node.text)
        for child in node:
            walk(child)
            if child.tail:
                pieces.append(child.tail)

    walk(element)
    return " ".join("".join(pieces).split())


def unlabelled_controls(html: str) -> list[str]:
    """Each form control of ``html`` without an accessible name, described by its tag,
    type, name and id (e.g. ``input name="key"``).

    ``input`` (but hidden, submit, button, reset and image ones), ``select`` and
    ``textarea`` need a non-empty ``aria-label``, an ``aria-labelledby`` naming
    existing elements, a wrapping ``<label>`` with text, or a ``<label for=ID>`` with
    text matching the control's id. Buttons (``<button>``, ``input type=button``)
    need text or one of the ARIA labels; ``input type=image`` needs ``alt`` or one."""
    import html5lib

    root = html5lib.parse(html, treebuilder="etree", namespaceHTMLElements=False)
    parents = {child: parent for parent in root.iter() for child in parent}
    by_id = {el.get("id"): el for el in root.iter() if el.get("id")}
    labels_for: dict[str, list[Element]] = {}
    for label in root.iter("label"):
        target = label.get("for")
        if target:
            labels_for.setdefault(target, []).append(label)

    def aria_named(element: Element) -> bool:
        if (element.get("aria-label") or "").strip():
            return True
        ids = (element.get("aria-labelledby") or "").split()
        return bool(ids) and all(i in by_id for i in ids) and any(_text(by_id[i]) for i in ids)

    def label_named(element: Element) -> bool:
        node = parents.get(element)
        while node is not None:
            if node.tag == "label" and _text(node, skip=element):
                return True
            node = parents.get(node)
        control_id = element.get("id")
        if not control_id:
            return False
        return any(_text(lab) for lab in labels_for.get(control_id, []))

    missing = []
    for element in root.iter():
        tag = element.tag
        if not isinstance(tag, str):  # comments
            continue
        if tag == "button":
            named = aria_named(element) or bool(_text(element))
        elif tag == "input":
            kind = (element.get("type") or "text").strip().lower()
            if kind in ("hidden", "submit", "reset"):
                continue  # submit and reset have default names
            if kind == "button":
                named = aria_named(element) or bool((element.get("value") or "").strip())
            elif kind == "image":
                named = aria_named(element) or bool((element.get("alt") or "").strip())
            else:
                named = aria_named(element) or label_named(element)
        elif tag in ("select", "textarea"):
            named = aria_named(element) or label_named(element)
        else:
            continue
        if not named:
            missing.append(_describe(element))
    return missing
