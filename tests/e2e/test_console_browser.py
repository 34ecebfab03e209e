"""The console in a real browser: Debian's chromium driven by Playwright.

Plain sync tests (the ``page`` fixture skips with a message where chromium or
Playwright is missing).  Screenshots land in ``.cache/artifacts/console``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import screenshot, strict_parse, unlabelled_controls
from tests.support.server import GatewayServer


@pytest.fixture(scope="module")
def ui_server(
    tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    server = GatewayServer(tiny_models_dir, tmp_path_factory.mktemp("ui"), default_model="tiny-a")
    yield server
    server.stop()


def sign_in(page: Any, server: GatewayServer, key: str) -> None:
    page.goto(f"{server.base_url}/ui")
    assert page.url.endswith("/ui/login")
    page.get_by_label("API key or token").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.base_url}/ui")


def check(page: Any) -> None:
    html = page.content()
    strict_parse("<!DOCTYPE html>\n" + html if not html.startswith("<!DOCTYPE") else html)
    assert unlabelled_controls(html) == []


def test_sign_in_and_sign_out(page: Any, ui_server: GatewayServer) -> None:
    sign_in(page, ui_server, ui_server.admin_key)
    assert page.get_by_role("heading", level=1).inner_text() == "test-admin"
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["gw_console"]["httpOnly"] and cookies["gw_console"]["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # not readable by scripts
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{ui_server.base_url}/ui/login")
    page.goto(f"{ui_server.base_url}/ui/keys")
    assert page.url.endswith("/ui/login")


def test_admin_creates_a_key_sees_its_secret_once_and_revokes_it(
    page: Any, ui_server: GatewayServer
) -> None:
    sign_in(page, ui_server, ui_server.admin_key)
    page.goto(f"{ui_server.base_url}/ui/keys")
    check(page)
    form = page.locator("#create-key")
    form.get_by_label("Name").fill("intern")
    form.get_by_label("Requests per minute").fill("30")
    form.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("Secret").input_value()
    assert secret.startswith("gw-")
    check(page)
    screenshot(page, "admin-key-created")
    api = httpx.get(
        f"{ui_server.base_url}/v1/models", headers={"Authorization": f"Bearer {secret}"}
    )
    assert api.status_code == 200
    page.get_by_role("link", name="All keys").click()
    assert secret not in page.content()  # shown once, never again
    page.get_by_role("link", name="intern").click()
    assert secret not in page.content()
    assert page.get_by_label("Requests per minute").input_value() == "30"
    screenshot(page, "admin-key")
    page.get_by_role("button", name="Revoke intern").click()
    page.wait_for_url(f"{ui_server.base_url}/ui/keys")
    row = page.locator("tr", has_text="intern")
    assert "revoked" in row.inner_text()
    refused = httpx.get(
        f"{ui_server.base_url}/v1/models", headers={"Authorization": f"Bearer {secret}"}
    )
    assert refused.status_code == 401


def test_load_and_unload_from_the_models_page_updates_live(
    page: Any, ui_server: GatewayServer
) -> None:
    sign_in(page, ui_server, ui_server.admin_key)
    page.goto(f"{ui_server.base_url}/ui/models")
    check(page)
    row = page.locator('tr[data-model="tiny-b"]')
    if ui_server.model("tiny-b")["state"] == "ready":
        row.get_by_role("button", name="Unload tiny-b").click()
        page.locator('tr[data-model="tiny-b"] .state.absent').wait_for(timeout=60_000)
    row.get_by_role("button", name="Load tiny-b").click()
    # No reload: htmx polls the table and the state turns ready by itself.
    page.locator('tr[data-model="tiny-b"] .state.ready').wait_for(timeout=60_000)
    assert ui_server.model("tiny-b")["state"] == "ready"
    screenshot(page, "admin-models")
    page.locator('tr[data-model="tiny-b"]').get_by_role("button", name="Unload tiny-b").click()
    deadline = time.monotonic() + 60
    while ui_server.model("tiny-b")["state"] != "absent" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ui_server.model("tiny-b")["state"] == "absent"
    page.locator('tr[data-model="tiny-b"] .state.absent').wait_for(timeout=30_000)


def test_member_sees_only_their_own_usage_and_403_on_admin_pages(
    page: Any, ui_server: GatewayServer
) -> None:
    ui_server.create_key("neighbour-n")
    member = ui_server.create_key("member-m", models=("tiny-a",))
    done = httpx.post(
        f"{ui_server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {member}"},
        json={"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        timeout=120,
    )
    assert done.status_code == 200
    sign_in(page, ui_server, member)
    check(page)
    text = page.content()
    assert "member-m" in text and "neighbour-n" not in text and "test-admin" not in text
    assert page.locator('tr[data-limit="requests_per_minute"]').count() == 1
    assert "tiny-a" in page.locator("#my-models").inner_text()
    assert "tiny-b" not in page.locator("#my-models").inner_text()
    assert page.get_by_role("link", name="Keys").count() == 0
    screenshot(page, "member-overview")
    for path in ("/ui/keys", "/ui/models", "/ui/usage"):
        response = page.goto(f"{ui_server.base_url}{path}")
        assert response.status == 403
        assert "neighbour-n" not in page.content()


def test_form_posted_without_its_csrf_token_is_refused(page: Any, ui_server: GatewayServer) -> None:
    sign_in(page, ui_server, ui_server.admin_key)
    page.goto(f"{ui_server.base_url}/ui/keys")
    page.evaluate("document.querySelector('#create-key input[name=csrf]').remove()")
    form = page.locator("#create-key")
    form.get_by_label("Name").fill("forged-by-script")
    form.get_by_role("button", name="Create key").click()
    assert page.get_by_role("heading", level=1).inner_text().startswith("403")
    keys = httpx.get(f"{ui_server.base_url}/admin/keys", headers=ui_server.headers).json()
    assert "forged-by-script" not in [k["name"] for k in keys["data"]]


def test_download_progress_updates_live_and_cancel_stops_it(
    page: Any, hub: Any, tiny_models_dir: Path, tmp_path: Path
) -> None:
    from tests.support.downloads import REPO_ID, serve

    hub.bytes_per_second = 40_000  # a tiny model (362 KiB) takes about 9 s
    server = serve(hub, tmp_path / "dl", tiny_models_dir)
    try:
        sign_in(page, server, server.admin_key)
        page.goto(f"{server.base_url}/ui/downloads")
        check(page)
        repo_field = page.get_by_label("Hub repository (org/name)")
        repo_field.fill("mlx-community/other")
        page.get_by_role("button", name="Download").click()
        page.get_by_role("button", name="Cancel mlx-community/other").click()
        page.locator("#jobs tr", has_text="mlx-community/other").filter(
            has_text="cancelled"
        ).wait_for(timeout=30_000)
        sent = hub.bytes_sent("mlx-community/other")
        time.sleep(1.0)
        assert hub.bytes_sent("mlx-community/other") - sent < 40_000  # in-flight at most

        page.get_by_label("Hub repository (org/name)").fill(REPO_ID)
        page.get_by_role("button", name="Download").click()
        row = page.locator("#jobs tr", has_text=REPO_ID)
        assert "downloading" in row.inner_text()
        first = float(row.locator("progress").get_attribute("value") or 0)
        # Without reloading, the row moves on as files arrive (htmx polls the table).
        deadline = time.monotonic() + 60
        while float(row.locator("progress").get_attribute("value") or 0) <= first:
            assert time.monotonic() < deadline, "the progress bar never moved"
            page.wait_for_timeout(200)
        row.filter(has_text="done").wait_for(timeout=60_000)
        screenshot(page, "admin-downloads")
    finally:
        server.stop()
