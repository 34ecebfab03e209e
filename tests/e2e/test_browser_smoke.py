"""The browser tests' machinery: Playwright drives the system chromium against a page
served on 127.0.0.1, clicks, sees inline JavaScript run, and takes a screenshot."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.browser import screenshot, strict_parse, unlabelled_controls

PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>smoke</title>
</head>
<body>
<p id="status">waiting</p>
<button id="go" type="button">Go</button>
<script>
document.getElementById("go").addEventListener("click", () => {
  document.getElementById("status").textContent = "clicked";
});
</script>
</body>
</html>
"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_click_runs_inline_javascript(page, site: str) -> None:
    strict_parse(PAGE.decode())
    assert unlabelled_controls(PAGE.decode()) == []
    response = page.goto(site)
    assert response is not None and response.status == 200
    assert page.title() == "smoke"
    assert page.text_content("#status") == "waiting"
    page.get_by_role("button", name="Go").click()
    page.wait_for_function("document.getElementById('status').textContent === 'clicked'")
    assert page.text_content("#status") == "clicked"
    shot = screenshot(page, "smoke-clicked")
    assert shot.name == "smoke-clicked.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
