"""The console over plain HTTP (httpx): sessions, CSRF, scopes, valid HTML, labels.

The browser tests (``test_console_browser.py``) click through the same pages in
chromium; these check what a hostile client does without a browser's help.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from policies.principal import Limits
from tests.support.browser import strict_parse, unlabelled_controls
from tests.support.server import GatewayServer


@pytest.fixture(scope="module")
def console_server(
    tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    server = GatewayServer(
        tiny_models_dir,
        tmp_path_factory.mktemp("console"),
        default_model="tiny-a",
        env={"GATEWAY_CONSOLE_SESSION_TTL": "120"},
    )
    yield server
    server.stop()


OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def new_client(server: GatewayServer) -> httpx.Client:
    client = httpx.Client(base_url=server.base_url, timeout=30)
    OPEN.append(client)
    return client


def sign_in(server: GatewayServer, key: str) -> httpx.Client:
    client = new_client(server)
    form = client.get("/ui/login")
    assert form.status_code == 200
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce
    signed = client.post("/ui/login", data={"key": key, "nonce": nonce.group(1)})
    assert signed.status_code == 303, signed.text
    assert signed.headers["location"] == "/ui"
    return client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def check_page(html: str) -> None:
    strict_parse(html)
    assert unlabelled_controls(html) == []


def test_session_cookie_is_httponly_strict_and_scoped(console_server: GatewayServer) -> None:
    client = new_client(console_server)
    form = client.get("/ui/login")
    check_page(form.text)
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    response = client.post("/ui/login", data={"key": console_server.admin_key, "nonce": nonce})
    cookie = next(
        v
        for k, v in response.headers.multi_items()
        if k == "set-cookie" and v.startswith("gw_console=")
    )
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "path=/ui" in lowered
    assert "max-age=120" in lowered
    assert "secure" not in lowered  # plain HTTP on loopback; Secure is set over TLS
    assert console_server.admin_key not in cookie


def test_every_admin_page_is_valid_html_with_labelled_controls(
    console_server: GatewayServer,
) -> None:
    client = sign_in(console_server, console_server.admin_key)
    for path in (
        "/ui",
        "/ui/models",
        "/ui/downloads",
        "/ui/keys",
        "/ui/usage",
        "/ui/events",
        "/ui/live/models",
        "/ui/live/downloads",
        "/ui/live/limits",
    ):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        assert response.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        if not path.startswith("/ui/live/"):
            check_page(response.text)
        else:
            assert unlabelled_controls(response.text) == []


def test_wrong_key_signs_nobody_in_and_sets_no_session(console_server: GatewayServer) -> None:
    client = new_client(console_server)
    form = client.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    bad = client.post("/ui/login", data={"key": "gw-nope-nope", "nonce": nonce})
    assert bad.status_code == 401
    check_page(bad.text)
    assert "gw_console=" not in bad.headers.get("set-cookie", "")
    assert client.get("/ui").status_code == 303  # to the sign-in form


def test_sign_in_without_the_forms_nonce_is_refused(console_server: GatewayServer) -> None:
    """Login CSRF: a cross-site page cannot sign a browser in as the attacker's key."""
    client = new_client(console_server)
    refused = client.post("/ui/login", data={"key": console_server.admin_key, "nonce": "forged"})
    assert refused.status_code == 403
    assert "gw_console=" not in refused.headers.get("set-cookie", "")


def test_member_sees_own_page_and_gets_403_on_every_admin_page(
    console_server: GatewayServer,
) -> None:
    other = console_server.create_key("other-secret-name", models=("tiny-b",))
    member_key = console_server.create_key(
        "member-m", models=("tiny-a",), limits=Limits(requests_per_minute=7)
    )
    client = sign_in(console_server, member_key)
    own = client.get("/ui")
    assert own.status_code == 200
    check_page(own.text)
    assert "member-m" in own.text and "tiny-a" in own.text
    assert "other-secret-name" not in own.text and "test-admin" not in own.text
    assert "tiny-b" not in own.text  # not in this key's allowlist
    assert other not in own.text
    for path in (
        "/ui/models",
        "/ui/downloads",
        "/ui/keys",
        "/ui/usage",
        "/ui/events",
        "/ui/live/models",
        "/ui/live/downloads",
        "/ui/keys/anything",
    ):
        denied = client.get(path)
        assert denied.status_code == 403, path
        assert "other-secret-name" not in denied.text
    csrf = csrf_of(own.text)
    before = console_server.model("tiny-b")["state"]
    for path, data in (
        ("/ui/models/action", {"csrf": csrf, "model": "tiny-b", "action": "load"}),
        ("/ui/keys", {"csrf": csrf, "name": "escalate", "scopes": "admin"}),
    ):
        assert client.post(path, data=data).status_code == 403
    assert console_server.model("tiny-b")["state"] == before
    keys = httpx.get(f"{console_server.base_url}/admin/keys", headers=console_server.headers).json()
    assert "escalate" not in [k["name"] for k in keys["data"]]


def test_form_without_csrf_token_is_refused_and_changes_nothing(
    console_server: GatewayServer,
) -> None:
    client = sign_in(console_server, console_server.admin_key)
    page = client.get("/ui/keys")
    csrf = csrf_of(page.text)
    for data in (
        {"name": "no-token"},
        {"name": "no-token", "csrf": ""},
        {"name": "no-token", "csrf": csrf[:-1] + ("A" if csrf[-1] != "A" else "B")},
    ):
        refused = client.post("/ui/keys", data=data)
        assert refused.status_code == 403
        check_page(refused.text)
    cross = client.post(
        "/ui/keys",
        data={"name": "no-token", "csrf": csrf},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert cross.status_code == 403
    keys = httpx.get(f"{console_server.base_url}/admin/keys", headers=console_server.headers).json()
    assert "no-token" not in [k["name"] for k in keys["data"]]


def test_another_sessions_csrf_token_does_not_pass(console_server: GatewayServer) -> None:
    """A token is bound to its session: an admin's token replayed in a member's session fails."""
    admin = sign_in(console_server, console_server.admin_key)
    admin_csrf = csrf_of(admin.get("/ui").text)
    admin2 = sign_in(console_server, console_server.admin_key)
    refused = admin2.post("/ui/keys", data={"name": "replayed", "csrf": admin_csrf})
    assert refused.status_code == 403


def test_revoked_key_ends_its_session_at_the_next_request(console_server: GatewayServer) -> None:
    key = console_server.create_key("short-lived", scopes=("infer", "admin"))
    client = sign_in(console_server, key)
    assert client.get("/ui/keys").status_code == 200
    key_id = key.split("-")[1]
    revoked = httpx.post(
        f"{console_server.base_url}/admin/keys/{key_id}/revoke", headers=console_server.headers
    )
    assert revoked.status_code == 200
    after = client.get("/ui/keys")
    assert after.status_code == 303 and after.headers["location"] == "/ui/login"


def test_signed_out_cookie_replayed_is_refused(console_server: GatewayServer) -> None:
    client = sign_in(console_server, console_server.admin_key)
    cookie = client.cookies["gw_console"]
    csrf = csrf_of(client.get("/ui").text)
    assert client.post("/ui/logout", data={"csrf": csrf}).status_code == 303
    replay = httpx.get(f"{console_server.base_url}/ui/keys", cookies={"gw_console": cookie})
    assert replay.status_code == 303


def test_hostile_key_name_is_escaped_everywhere(console_server: GatewayServer) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    console_server.create_key(hostile)
    client = sign_in(console_server, console_server.admin_key)
    for path in ("/ui/keys", "/ui/usage"):
        page = client.get(path)
        assert "<script>alert(1)" not in page.text and "<img src=x" not in page.text
        check_page(page.text)


def test_console_key_form_validates_like_the_api(console_server: GatewayServer) -> None:
    client = sign_in(console_server, console_server.admin_key)
    csrf = csrf_of(client.get("/ui/keys").text)
    for data in (
        {"name": "bad-limit", "requests_per_minute": "-1"},
        {"name": "bad-limit", "tokens_per_day": "1e99"},
        {"name": "bad-scope", "scopes": "root"},
        {"name": ""},
        {"name": "bad-expiry", "expires_in_days": "soon"},
        {"name": "bad-expiry", "expires_in_days": "nan"},
        {"name": "bad-expiry", "expires_in_days": "inf"},
        {"name": "bad-expiry", "expires_in_days": "-1"},
    ):
        refused = client.post("/ui/keys", data={"csrf": csrf, **data})
        assert refused.status_code == 400, (data, refused.text[:300])
        check_page(refused.text)
    keys = httpx.get(f"{console_server.base_url}/admin/keys", headers=console_server.headers).json()
    assert not {"bad-limit", "bad-scope", "bad-expiry"} & {k["name"] for k in keys["data"]}
